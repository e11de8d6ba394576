"""Internal: every event of every run a registry drives, for an observer in the same process.

`stageline serve --http` uses it so the console shows what the journal cannot yet: the
stage in flight and its steps' starts and retries. A tap is one more subscriber ("*") on
each run a factory bound to the registry starts from then on; it runs on the run's actor
thread, so it must be quick (hand the event to another thread) and never block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stageline.core.events import Event

Tap = Callable[[Event], Any]


def tap_events(registry: Any, tap: Tap) -> Callable[[], None]:
    """Send every event of the runs `registry` drives to `tap`; returns how to stop."""
    supervisor = registry.supervisor
    supervisor.event_taps = (*supervisor.event_taps, tap)

    def stop() -> None:
        supervisor.event_taps = tuple(t for t in supervisor.event_taps if t is not tap)

    return stop
