"""Time, injectable: the system clock in production, a manual clock in tests."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Where the runtime reads time. `manual` clocks only move when advanced."""

    manual: bool

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def subscribe(self, callback: Callable[[], None]) -> None: ...


class SystemClock:
    """Real time."""

    manual = False

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Real time moves on its own; nobody needs telling."""


class ManualClock:
    """A clock that moves only when `advance` is called; timers fire as it passes them."""

    manual = True

    def __init__(self, start: float = 1_000_000.0, wall_start: float = 1_767_225_600.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._listeners: list[Callable[[], None]] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` and wake whoever waits on this clock."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back (advance({seconds}))")
        self._now += seconds
        for listener in list(self._listeners):
            listener()


def iso_utc(wall: float) -> str:
    """ISO-8601 UTC text for a wall-clock timestamp."""
    return _dt.datetime.fromtimestamp(wall, _dt.UTC).isoformat()
