"""Loading the daemon's application: APP "module:attribute" -> PipelineFactory objects.

APP names a PipelineFactory, a Pipeline, a list (or dict) of them, or a callable returning
one of those. The module is imported with the current folder importable, after the
library and its dependencies (see `stageline._app_path`). `bind_factories` re-binds every
factory to the daemon's store and registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from stageline._app_path import importable_here
from stageline.actors.factory import PipelineFactory
from stageline.actors.registry import Registry
from stageline.core.definition import Pipeline
from stageline.core.errors import StagelineError
from stageline.core.store import Store


def load_app(spec: str) -> list[PipelineFactory]:
    """The factories named by "module:attribute" (the module is imported from sys.path)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise StagelineError(f"APP must be 'module:attribute', got {spec!r}")
    importable_here()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StagelineError(f"cannot import {module_name!r} for APP {spec!r}: {exc}") from exc
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise StagelineError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return _factories(target, spec)


def _factories(target: Any, spec: str) -> list[PipelineFactory]:
    if isinstance(target, PipelineFactory | Pipeline):
        target = [target]
    elif isinstance(target, Mapping):
        target = list(target.values())
    elif callable(target):
        return _factories(target(), spec)
    if not isinstance(target, Iterable) or isinstance(target, str | bytes):
        raise StagelineError(
            f"APP {spec!r} is a {type(target).__name__}; it must be a PipelineFactory, a "
            "Pipeline, a list of them, or a callable returning one of those"
        )
    found = [PipelineFactory(t) if isinstance(t, Pipeline) else t for t in target]
    bad = [type(f).__name__ for f in found if not isinstance(f, PipelineFactory)]
    if bad or not found:
        raise StagelineError(f"APP {spec!r} must give PipelineFactory or Pipeline objects: {bad}")
    return found


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
