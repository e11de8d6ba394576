"""The daemon's schedules: the Schedules of its APP fired by a Scheduler on its registry.

`stageline serve` finds the Schedule objects of its APP beside the factories
(`stageline._daemon_app.load_app_parts`). Once the daemon has recovered its orphaned runs,
`served_schedules` saves each in the store and runs the scheduler's first pass (catching
up fire times missed while no daemon ran, within each one's `catchup_window`), and stops
firing when the daemon stops serving, before its registry stops. Every daemon serving
the store fires the same schedules: each firing's run id makes it start once (see
stageline.actors.scheduler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from stageline.actors.scheduler import Scheduler
from stageline.core.schedule import Schedule


class Serving(Protocol):
    """What of a Daemon (stageline.daemon) the schedules use."""

    @property
    def registry(self) -> Any: ...
    @property
    def factories(self) -> Mapping[str, Any]: ...
    @property
    def schedules(self) -> Sequence[Schedule]: ...
    @property
    def on_start(self) -> Callable[[Any], Any] | None: ...
    @property
    def log(self) -> Any: ...


@contextmanager
def served_schedules(daemon: Serving) -> Iterator[Scheduler | None]:
    """Fire `daemon.schedules` while the block runs (None: it has none)."""
    scheduler = start_schedules(daemon)
    try:
        yield scheduler
    finally:
        if scheduler is not None:
            scheduler.stop()


def start_schedules(daemon: Serving) -> Scheduler | None:
    """Start firing `daemon.schedules`; returns after the first pass (None: no schedule)."""
    if not daemon.schedules:
        return None
    scheduler = Scheduler(
        daemon.registry, daemon.factories, daemon.schedules, on_start=daemon.on_start
    )
    scheduler.start()
    daemon.log.info("daemon:schedules", schedules=[s.id for s in daemon.schedules])
    return scheduler
