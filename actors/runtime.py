"""The shared machinery runs use: a clock, its timer service, and the worker pool."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from stageline.core.clock import Clock, SystemClock

from .timers import TimerService
from .workers import Workers, shared_workers


@dataclass(frozen=True, slots=True)
class Runtime:
    clock: Clock
    timers: TimerService
    workers: Workers


_lock = threading.Lock()
_system: Runtime | None = None
_by_clock: weakref.WeakKeyDictionary[Clock, Runtime] = weakref.WeakKeyDictionary()


def runtime_for(clock: Clock) -> Runtime:
    """One Runtime (one timer thread) per clock; all system clocks share one."""
    global _system
    with _lock:
        if isinstance(clock, SystemClock):
            if _system is None:
                _system = Runtime(clock, TimerService(clock), shared_workers())
            return _system
        runtime = _by_clock.get(clock)
        if runtime is None:
            runtime = Runtime(clock, TimerService(clock), shared_workers())
            _by_clock[clock] = runtime
        return runtime
