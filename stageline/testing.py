"""Helpers to test pipelines deterministically: a manual clock and waiting without sleeping.

from stageline.testing import ManualClock, EventRecorder, wait_for_status

clock = ManualClock()
with Registry(clock=clock) as registry:
    factory = PipelineFactory(pipeline, registry=registry)
    run = factory.prepare()
    events = EventRecorder(run)               # subscribes to "*"
    future = run.start()
    events.wait_for("step:retry")            # blocks until it happens
    advance(clock, 2.0)                       # fires the retry's backoff timer now

With a supervising registry, `wait_for_stats(registry, retrying=1)` returns once a failed
run's restart timer is armed; `advance(clock, backoff, registry)` then fires it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from stageline.actors.runtime import runtime_for
from stageline.core.clock import ManualClock
from stageline.core.events import Event

__all__ = ["EventRecorder", "ManualClock", "advance", "wait_for_stats", "wait_for_status"]


def advance(clock: ManualClock, seconds: float, *registries: Any) -> None:
    """Move a manual clock forward and return once every timer due by then has fired.

    Pass the registries whose timers you advance: this also waits until each has handled
    what its timers told it (pause expiry, export, TTL, retries).
    """
    clock.advance(seconds)
    services = [runtime_for(clock).timers, *(r.supervisor.timers for r in registries)]
    for timers in services:
        if not timers.wait_idle():
            raise AssertionError("timers did not settle within 10s")
    for registry in registries:
        registry.stats()  # an ask: answered after the messages the timers sent


class EventRecorder:
    """Collects a run's events; `wait_for` blocks on a condition, never on a sleep."""

    def __init__(self, run: Any = None, name: str = "*") -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()
        if run is not None:
            run.on(name, self)

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def names(self) -> list[str]:
        with self._cond:
            return [e.name for e in self.events]

    def of(self, name: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.name == name]

    def wait_for(
        self, name: str, count: int = 1, timeout: float = 10.0, **fields: Any
    ) -> list[Event]:
        """Wait until `count` events named `name` (with these field values) have arrived."""

        def matching() -> list[Event]:
            return [
                e
                for e in self.events
                if e.name == name and all(getattr(e, k) == v for k, v in fields.items())
            ]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                raise AssertionError(
                    f"expected {count} x {name} {fields or ''} within {timeout}s; "
                    f"got {[e.name for e in self.events]}"
                )
            return matching()


def wait_for_status(
    store: Any, run_id: str, status: str | tuple[str, ...], timeout: float = 10.0
) -> Any:
    """Wait until the store shows the run in `status` (for runs driven elsewhere).

    Polls the store with a short real-time backoff: for processes you do not control.
    Within one process, prefer `EventRecorder.wait_for` or the run's future.
    """
    wanted = (status,) if isinstance(status, str) else status
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        info = store.get_run(run_id)
        if info.status in wanted:
            return info
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"run {run_id!r} is {info.status!r}, not {wanted} after {timeout}s"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_for_stats(registry: Any, timeout: float = 10.0, **expected: int) -> dict[str, int]:
    """Wait until `registry.stats()` shows these counts (e.g. `retrying=1`); return them.

    Wakes each time the registry handles a message, never on a sleep: use it before
    `advance` to know that a failed run's restart timer is armed.
    """
    deadline = time.monotonic() + timeout
    supervisor = registry.supervisor
    while True:
        generation = supervisor.generation
        stats: dict[str, int] = registry.stats()
        if all(stats.get(name) == value for name, value in expected.items()):
            return stats
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"registry stats {stats} never matched {expected} in {timeout}s")
        supervisor.wait_changed(generation + 1, remaining)  # the stats() ask was one message
