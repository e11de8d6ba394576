"""Loading the daemon's application: APP "module:attribute" -> PipelineFactory objects.

APP names a PipelineFactory, a Pipeline, a list (or dict) of them, or a callable returning
one of those; the list (or dict) may also hold Schedule objects, which the daemon serves
(`load_app_parts`; a Schedule of a pipeline no factory serves is a start-up error).
The module is imported with the current folder importable, after the library and its
dependencies (see `stageline._app_path`). `bind_factories` re-binds every
factory to the daemon's store and registry.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sysconfig
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from stageline import stores
from stageline._app_path import importable_here
from stageline.actors.factory import PipelineFactory
from stageline.actors.registry import Registry
from stageline.actors.scheduler import serving_problems
from stageline.core.definition import Pipeline
from stageline.core.errors import StagelineError
from stageline.core.schedule import Schedule
from stageline.core.store import Store

_PARTS: tuple[Any, ...] = (importable_here, PipelineFactory, Pipeline, stores)
_OURS = tuple(os.path.dirname(os.path.abspath(inspect.getfile(part))) for part in _PARTS)
"""stageline's own folders (the facade, actors, core, stores): never the application's."""


def load_app(spec: str) -> list[PipelineFactory]:
    """The factories named by "module:attribute" (the module is imported from sys.path)."""
    return load_app_parts(spec)[0]


def load_app_parts(spec: str) -> tuple[list[PipelineFactory], list[Schedule]]:
    """The factories and the schedules named by "module:attribute"; StagelineError for a
    schedule whose pipeline no factory serves, or two schedules with one id."""
    items = _items(_app_target(spec), spec)
    schedules = [item for item in items if isinstance(item, Schedule)]
    factories = _factories([item for item in items if not isinstance(item, Schedule)], spec)
    _check_schedules(schedules, factories, spec)
    return factories, schedules


def _app_target(spec: str) -> Any:
    """The object "module:attribute" names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise StagelineError(f"APP must be 'module:attribute', got {spec!r}")
    importable_here()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if not _names_module(exc, module_name):
            raise AppImportError(spec, exc) from exc
        raise StagelineError(f"cannot import {module_name!r} for APP {spec!r}: {exc}") from exc
    except Exception as exc:  # the application's own code raised while its module ran
        raise AppImportError(spec, exc) from exc
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise StagelineError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return target


class AppImportError(StagelineError):  # type: ignore[misc]  # (core is untyped here)
    """The APP's module raised while it was imported: its exception, and where.

    `where` is (file, line number, source line) in the application's own code (the
    deepest frame outside Python's and stageline's files), None when none is known.
    `block()` is what `serve` prints: the exception and that line, no traceback.
    """

    def __init__(self, spec: str, error: BaseException) -> None:
        self.error = error
        self.where = _user_line(error)
        super().__init__(
            f"APP {spec!r} raised on import: {type(error).__name__}: {error}"
        )  # fmt: skip

    def block(self) -> str:
        if self.where is None:
            return str(self)
        path, line, source = self.where
        shown = f"\n    {source}" if source else ""
        return f'{self}\n  File "{path}", line {line}{shown}'


def _names_module(exc: ImportError, module_name: str) -> bool:
    """Whether `exc` says the APP's module itself (or its package) cannot be found."""
    name = exc.name or ""
    return isinstance(exc, ModuleNotFoundError) and (
        module_name == name or module_name.startswith(f"{name}.")
    )


def _user_line(error: BaseException) -> tuple[str, int, str] | None:
    """(file, line, source) of the deepest frame of `error` in the application's code."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return error.filename, error.lineno, (error.text or "").strip()
    frames = [f for f in traceback.extract_tb(error.__traceback__) if _users(f.filename)]
    if not frames:
        return None
    frame = frames[-1]
    return frame.filename, frame.lineno or 0, (frame.line or "").strip()


def _users(filename: str) -> bool:
    """Whether `filename` is the application's: not Python's, a package's or stageline's."""
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    path = os.path.abspath(filename)
    libraries = [sysconfig.get_path(name) for name in ("stdlib", "purelib", "platlib")]
    return not any(path.startswith(os.path.join(p, "")) for p in (*libraries, *_OURS) if p)


def _items(target: Any, spec: str) -> list[Any]:
    """What the APP's object holds: its factories, pipelines and schedules (unchecked)."""
    if isinstance(target, PipelineFactory | Pipeline | Schedule):
        return [target]
    if isinstance(target, Mapping):
        return list(target.values())
    if callable(target):
        return _items(target(), spec)
    if not isinstance(target, Iterable) or isinstance(target, str | bytes):
        raise StagelineError(
            f"APP {spec!r} is a {type(target).__name__}; it must be a PipelineFactory, a "
            "Pipeline, a list of them (and Schedules), or a callable returning one of those"
        )
    return list(target)


def _factories(target: Any, spec: str) -> list[PipelineFactory]:
    items = [item for item in _items(target, spec) if not isinstance(item, Schedule)]
    found = [PipelineFactory(t) if isinstance(t, Pipeline) else t for t in items]
    bad = [type(f).__name__ for f in found if not isinstance(f, PipelineFactory)]
    if bad or not found:
        raise StagelineError(f"APP {spec!r} must give PipelineFactory or Pipeline objects: {bad}")
    return found


def _check_schedules(
    schedules: list[Schedule], factories: list[PipelineFactory], spec: str
) -> None:
    problems = serving_problems(schedules, {factory.pipeline.id for factory in factories})
    if problems:
        raise StagelineError(f"APP {spec!r}: {'; '.join(problems)}")


def bind_factories(
    factories: Iterable[PipelineFactory], store: Store, registry: Registry
) -> dict[str, PipelineFactory]:
    """The factories on the daemon's store and registry, keyed by pipeline id."""
    bound: dict[str, PipelineFactory] = {}
    for factory in factories:
        pipeline_id = factory.pipeline.id
        if pipeline_id in bound:
            raise StagelineError(f"two factories serve pipeline {pipeline_id!r}; keep one")
        bound[pipeline_id] = factory.bound_to(store, registry)
    return bound
