"""Delivery of a run's events to its subscribers, in seq order, guarding each handler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from stageline.core.errors import StagelineError, describe_error
from stageline.core.events import EVENT_NAMES, Event

from .logs import EventLogger, library_logger

Handler = Callable[[Event], Any]


class Emitter:
    """Subscribers by event name ("*" for all); handlers run on the run's actor thread."""

    def __init__(self, logger: EventLogger) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[str, tuple[Handler, ...]] = {}
        self._logger = logger

    def on(self, name: str, handler: Handler) -> Callable[[], None]:
        """Subscribe `handler` to `name`; returns a function that unsubscribes it."""
        if name != "*" and name not in EVENT_NAMES:
            raise StagelineError(
                f"unknown event name {name!r}; use '*' or one of: {', '.join(EVENT_NAMES)}"
            )
        if not callable(handler):
            raise StagelineError(f"handler for {name!r} must be callable")
        with self._lock:
            self._handlers[name] = (*self._handlers.get(name, ()), handler)

        def unsubscribe() -> None:
            with self._lock:
                remaining = list(self._handlers.get(name, ()))
                if handler in remaining:
                    remaining.remove(handler)
                self._handlers[name] = tuple(remaining)

        return unsubscribe

    def wants(self, name: str) -> bool:
        """Would an event of this name reach a handler or the log?"""
        handlers = self._handlers
        return bool(handlers.get(name) or handlers.get("*")) or self._logger.enabled(name)

    def emit(self, event: Event) -> None:
        self._logger.log(event)
        handlers = self._handlers
        for handler in (*handlers.get(event.name, ()), *handlers.get("*", ())):
            try:
                handler(event)
            except BaseException as exc:  # a handler never fails the run
                library_logger(run_id=event.run_id).error(
                    "handler_failed",
                    event_name=event.name,
                    handler=_name_of(handler),
                    error=describe_error(exc),
                )


def _name_of(handler: Handler) -> str:
    try:
        return repr(handler)
    except Exception:
        return f"<{type(handler).__name__} (its repr() raised)>"
