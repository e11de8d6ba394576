"""Logging of run events through structlog, without ever configuring structlog.

If the application configured structlog, events go to `structlog.get_logger("stageline")`.
Otherwise they go through structlog to the standard `logging` logger "stageline", so an
application that configured nothing sees nothing, and a disabled level is checked before
any event dict is built.

structlog itself is imported only when something is to be logged: an application that has
not imported structlog cannot have configured it, and a cold start stays fast.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from stageline.core.errors import describe_error
from stageline.core.events import Event

STDLIB_LOGGER = logging.getLogger("stageline")
STDLIB_LOGGER.addHandler(logging.NullHandler())  # no "last resort" stderr output

_LEVEL_OF = {
    "step:start": logging.DEBUG,
    "step:success": logging.DEBUG,
    "step:retry": logging.WARNING,
    "step:failure": logging.ERROR,
    "stage:failure": logging.ERROR,
    "pipeline:failure": logging.ERROR,
}
_METHOD_OF = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
}
_PAYLOAD = ("attempt", "duration", "routing", "resume_at", "entry", "resumed", "pause_timeout")


def structlog_configured() -> bool:
    """Has the application configured structlog? (Without importing it if it has not.)"""
    module = sys.modules.get("structlog")
    if module is None:
        return False
    if not hasattr(module, "is_configured"):  # another thread is importing it right now:
        import structlog as module  # this waits until that import has finished

    return bool(module.is_configured())


def _stdlib_structlog(**context: Any) -> Any:
    import structlog

    return structlog.wrap_logger(
        STDLIB_LOGGER,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        **context,
    )


def library_logger(custom: Any = None, **context: Any) -> Any:
    """A structlog logger bound with `context`: the custom one, the app's, or stdlib's."""
    if custom is not None:
        return custom.bind(**context)
    if structlog_configured():
        import structlog

        return structlog.get_logger("stageline").bind(**context)
    return _stdlib_structlog(**context)


def level_of(event_name: str) -> int:
    return _LEVEL_OF.get(event_name, logging.INFO)


class EventLogger:
    """Logs each run event once, at the level its kind deserves.

    Whether structlog is configured is read once, when the logger is made (at run start).
    """

    def __init__(self, custom: Any = None) -> None:
        self._custom = custom
        self._structlog = custom is not None or structlog_configured()

    def enabled(self, event_name: str) -> bool:
        """Whether an event of this name would be logged (cheap; no event dict built)."""
        return self._structlog or STDLIB_LOGGER.isEnabledFor(level_of(event_name))

    def log(self, event: Event) -> None:
        level = level_of(event.name)
        if not self._structlog and not STDLIB_LOGGER.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "run_id": event.run_id,
            "pipeline_id": event.pipeline_id,
            "stage_id": event.stage_id,
            "step_id": event.step_id,
            "path": "/".join(f"{p.pipeline_id}:{p.stage_id or ''}" for p in event.path),
            "seq": event.seq,
        }
        for name in _PAYLOAD:
            value = getattr(event, name)
            if value is not None:
                fields[name] = value
        if event.error is not None:
            try:
                fields["error"] = str(event.error)
            except Exception:  # user code made str() raise: the log line still goes out
                fields["error"] = describe_error(event.error)
        logger = library_logger(self._custom)
        getattr(logger, _METHOD_OF[level])(event.name, **fields)


def conflict_logger(logger: Any, run_id: str, stage_id: str) -> Any:
    """A merge's `on_conflict` callback logging each conflicting leaf at debug level, or
    None when nobody would see it (then the merge does not look for conflicts)."""
    if not STDLIB_LOGGER.isEnabledFor(logging.DEBUG) and logger is None:
        return None
    log = logger or STDLIB_LOGGER

    def conflict(path: str, earlier: str, later: str) -> None:
        if isinstance(log, logging.Logger):
            message = f"patch_conflict run_id={run_id} stage_id={stage_id} "
            log.debug(message + f"path={path} earlier={earlier} winner={later}")
        else:
            log.debug("patch_conflict", path=path, earlier=earlier, winner=later)

    return conflict


_LEVELS = ("debug", "info", "warning", "error")


def adapt_logger(logger: Any) -> Any:
    """A logger given to a PipelineFactory, made complete, or StagelineError at once.

    stageline calls `bind(**context)` and `debug/info/warning/error(event, **fields)`. A
    logger with only some of those levels (say `info` and `error`) gets the others mapped
    to the nearest one it has (a missing level goes to the next more severe one, else to
    the next less severe); one without `bind` keeps the bound context itself and passes it
    with each call. A logger with none of the four levels is refused.
    """
    if logger is None:
        return None
    has = [level for level in _LEVELS if callable(getattr(logger, level, None))]
    if not has:
        from stageline.core.errors import StagelineError

        raise StagelineError(
            f"logger {type(logger).__name__} has none of the methods debug, info, warning, "
            "error; give a structlog logger (structlog.get_logger()) or one with those methods"
        )
    if len(has) == len(_LEVELS) and callable(getattr(logger, "bind", None)):
        return logger
    return _AdaptedLogger(logger, has, {})


class _AdaptedLogger:
    """A partial logger completed: missing levels mapped, bound context kept here."""

    def __init__(self, logger: Any, has: list[str], context: dict[str, Any]) -> None:
        self._logger = logger
        self._has = has
        self._context = context
        for level in _LEVELS:
            setattr(self, level, self._method(_nearest(level, has)))

    def _method(self, level: str) -> Any:
        method = getattr(self._logger, level)

        def log(event: Any, *args: Any, **fields: Any) -> Any:
            return method(event, *args, **{**self._context, **fields})

        return log

    def __getattr__(self, name: str) -> Any:
        """Other logging methods (exception, critical, warn, ...) go to the error level,
        or to debug for the quieter ones (trace, msg)."""
        if name.startswith("_"):
            raise AttributeError(name)
        level = "debug" if name in ("trace", "msg") else "error"
        return self._method(_nearest(level, self._has))

    def bind(self, **context: Any) -> _AdaptedLogger:
        bind = getattr(self._logger, "bind", None)
        if callable(bind):
            return _AdaptedLogger(bind(**context), self._has, self._context)
        return _AdaptedLogger(self._logger, self._has, {**self._context, **context})


def _nearest(level: str, has: list[str]) -> str:
    index = _LEVELS.index(level)
    above = [name for name in _LEVELS[index:] if name in has]
    below = [name for name in reversed(_LEVELS[:index]) if name in has]
    return (above or below)[0]
