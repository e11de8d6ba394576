"""Durations on the command line: `30s`, `15m`, `12h`, `7d` (one parser for every option).

A duration is a number (whole or decimal, not negative) and one unit: s (seconds), m
(minutes), h (hours), d (days) or w (weeks). A bare number, a unit of its own, or anything
else is refused with a message that shows the accepted form.
"""

from __future__ import annotations

import math
import re
from typing import Final

UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_PATTERN: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
FORM: Final = "a number and a unit: s, m, h, d or w (e.g. 30s, 15m, 12h, 7d)"


class DurationError(ValueError):
    """A text that is not a duration; the message says what is accepted."""


def parse_duration(text: str, option: str = "DURATION") -> float:
    """Seconds in `text` ("7d" -> 604800.0); DurationError naming `option` otherwise."""
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise DurationError(f"{option} must be {FORM}, got {text!r}")
    seconds = float(match.group(1)) * UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise DurationError(f"{option} is too long: {text!r}")
    return seconds
