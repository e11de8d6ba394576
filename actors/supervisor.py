"""Supervisor: the registry's state and interface shared by its actor, its runs and factories.

A Registry (the public face) owns one Supervisor. Live runs reach it through the
`SupervisorLink` protocol (track, ended, cancel_restart); factories use it to find a
live run (the resume fast path), to take leases, and to be remembered for `retry`. The
registry's actor (actors/registry_actor.py) is the only writer of `live` and `windows`;
other threads only read them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from stageline.core import lifecycle
from stageline.core.clock import Clock
from stageline.core.results import RunResult
from stageline.core.supervision import RetryPolicy
from stageline.core.transitions import Lease

from .handle import FactoryLink, RunHandle
from .registry_messages import CancelRestart, CheckAborts, Ended, Forget, Queued, Stats, Track
from .runtime import Runtime
from .timers import TimerHandle, TimerService
from .workers import shared_workers

_ASKED = frozenset({lifecycle.PAUSED, lifecycle.FAILED, lifecycle.SLEEPING})


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """A Registry's settings (see `Registry` for each)."""

    default_pause_timeout: float
    checkpoint_ttl: float | None
    supervision: RetryPolicy | None
    lease_ttl: float
    owner: str
    clock: Clock
    max_bundle_bytes: int
    max_recoveries: int | None = 5


class Supervisor:
    """What a registry's actor, its runs and its factories share."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self.live: dict[str, RunHandle] = {}
        self.windows: dict[str, tuple[int, TimerHandle | None]] = {}
        """Open pause windows: run_id -> (token, timer; None when exporting at once)."""
        self.factories: dict[str, FactoryLink] = {}
        self.factories_lock = threading.Lock()
        self.fast_resumes = 0
        self.changed = threading.Condition()
        self.generation = 0
        self.timers = TimerService(config.clock)
        self.runtime = Runtime(config.clock, self.timers, shared_workers())
        self.stopped = False
        self.actor: Any = None
        """The registry's actor (set by the Registry once started)."""
        self.event_taps: tuple[Callable[[Any], Any], ...] = ()
        """Observers of every run's events (actors/taps.py)."""

    # --- SupervisorLink: what runs tell it ---------------------------------------------

    def track(self, run: RunHandle) -> None:
        record, config = run.record, self.config
        now = config.clock.wall()
        stale = record.lease_until is None or record.lease_until < now + config.lease_ttl / 2
        if record.owner == config.owner and stale:  # prepared long ago: renew before it runs
            run.store.renew_leases(config.owner, [record.run_id], now + config.lease_ttl)
        if self.live.get(run.run_id) is run:
            # Resumed on the fast path and still held: the actor has nothing to do (the
            # lease renewal runs while any run is live), only the pause window's timer
            # must not fire. Cancelling it here, not by a message, spares the resume a
            # wake-up of the registry's thread. An export that let go of the run first
            # (under the run's lock, before the claim) took it out of `live`: then the
            # message below tracks it again.
            window = self.windows.get(run.run_id)
            if window is not None and window[1] is not None:
                window[1].cancel()
            return
        try:
            self.actor.tell(Track(run))
        except pykka.ActorDeadError:
            pass  # the registry was stopped: the run's start() refuses it

    def ended(
        self, run: RunHandle, result: RunResult | None, pause: Any, error: BaseException | None
    ) -> bool:
        timeout = getattr(pause, "timeout", None)
        message = Ended(run, result, timeout, error, run.segment)
        try:
            if error is not None or run.status in _ASKED:
                # an ask: when run() returns "paused", the pause window is already armed
                # (and when it returns "sleeping", its wake-up timer);
                # a failed run's restart is decided before its future would end
                return bool(self.actor.ask(message, timeout=30))
            self.actor.tell(message)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
        return False

    def queue(self, run: RunHandle) -> None:
        """Hold a queued run (its limits did not admit it) until a slot frees."""
        try:
            self.actor.tell(Queued(run))
        except pykka.ActorDeadError:
            pass  # the registry was stopped: the run stays queued in the store

    def check_aborts(self) -> None:
        """Look for abort flags other processes set on the runs this registry drives
        (the lease renewal does it too); those runs are aborted."""
        self.actor.tell(CheckAborts())

    def cancel_restart(self, run_id: str) -> None:
        try:
            self.actor.ask(CancelRestart(run_id), timeout=30)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass

    # --- what factories use ------------------------------------------------------------

    def lookup(self, run_id: str) -> RunHandle | None:
        """The live run, if this registry holds it (a plain dict read)."""
        if self.stopped:
            return None
        return self.live.get(run_id)

    def forget(self, run: RunHandle) -> None:
        """Drop a live copy found stale (the store moved on without this process)."""
        self.actor.tell(Forget(run, run.segment))

    def settle(self) -> None:
        """Wait until the registry's actor has handled what was told it before."""
        try:
            self.actor.ask(Stats(), timeout=30)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass

    def resumed_fast(self) -> None:
        self.fast_resumes += 1  # a statistic: a lost increment under a race is harmless

    def lease(self) -> Lease:
        """The lease a commit that takes a run for this registry carries."""
        config = self.config
        return Lease(config.owner, config.clock.wall() + config.lease_ttl)

    def register(self, factory: FactoryLink) -> None:
        """Remember `factory` (by its pipeline id) so `retry` and `failed_runs` find it."""
        with self.factories_lock:
            self.factories[factory.pipeline.id] = factory

    def known_factories(self) -> list[FactoryLink]:
        with self.factories_lock:
            return list(self.factories.values())

    # --- change notices (stageline.testing.wait_for_stats) ------------------------------

    def notify_changed(self) -> None:
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def wait_changed(self, seen: int, timeout: float) -> int:
        """Wait until the registry handled a message after generation `seen`; the newest."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation > seen, timeout)
            return self.generation
