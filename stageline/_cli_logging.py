"""Logging of the `stageline serve` process: JSON lines on stdout.

Only `serve` calls this; the library itself never configures logging. Both structlog
(the runs' events) and the standard `logging` records of "stageline" (the registry's own
warnings and errors) end up as one JSON object a line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any


def configure_logging(level: str = "info") -> None:
    """Send structlog (the library's run events included) to stdout as JSON lines."""
    import structlog

    number = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    library = logging.getLogger("stageline")  # the registry's own warnings and errors
    library.addHandler(ToStructlog())
    library.setLevel(number)
    library.propagate = False


class ToStructlog(logging.Handler):
    """Forwards standard `logging` records of "stageline" to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        import structlog

        log = structlog.get_logger("stageline")
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        getattr(log, record.levelname.lower(), log.error)(record.getMessage(), **fields)
