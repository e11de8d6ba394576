"""Logging of the `stageline serve` process: JSON lines or a console, on stdout.

Only `serve` uses this, through `stageline.cli.configure_logging`; the library itself
never configures logging. Both structlog
(the runs' events) and the standard `logging` records of "stageline" (the registry's own
warnings and errors) end up in one format: "json" (one JSON object a line, for log
shippers) or "console" (structlog's ConsoleRenderer, for people; coloured on a terminal).
`--log-format` chooses; by default a terminal gets the console and anything else JSON.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

FORMATS = ("json", "console")


def default_format() -> str:
    """ "console" when stdout is a terminal, else "json"."""
    return "console" if sys.stdout.isatty() else "json"


def processors(log_format: str) -> list[Any]:
    """structlog's processors for `serve`: level, UTC time, then the renderer."""
    import structlog

    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *_renderer(log_format),
    ]


def route_library_records(number: int) -> None:
    """Send the standard `logging` records of "stageline" (the registry's own warnings
    and errors) through structlog, at level `number`."""
    library = logging.getLogger("stageline")
    library.addHandler(ToStructlog())
    library.setLevel(number)
    library.propagate = False


def _renderer(log_format: str) -> list[Any]:
    """The last processors: JSON lines, or structlog's console (plain tracebacks)."""
    import structlog

    if log_format == "console":
        colors = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        return [structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )]  # fmt: skip
    return [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]


class ToStructlog(logging.Handler):
    """Forwards standard `logging` records of "stageline" to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        import structlog

        log = structlog.get_logger("stageline")
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        getattr(log, record.levelname.lower(), log.error)(record.getMessage(), **fields)
