"""The Scheduler: starts the runs of Schedules at their fire times, on a registry's clock.

`core/schedule.py` decides (which fire times are due, what the overlap policy does); this
module carries it out. One small actor does every pass, so a firing never blocks the
registry's timer thread: each schedule has one timer armed for its next fire time, whose
callback only tells the actor. A pass reads the schedule's row in the store (its
`last_fire`, written by whichever daemon fired last), starts a run for each due fire time
(`factory.prepare(run_id=schedule.run_id(t), state=schedule.state).start()`; a
RunExistsError means another daemon started it first, which is not an error), records
each with `store.mark_fired` and re-arms the timer.

Decisions the contract leaves open:

- A timer may fire a little late: fire times up to `LATE_GRACE` seconds old are on time,
  even with `catchup_window=0` and for a schedule that never fired before.
- The previous run of a schedule (for "skip" and "buffer_one") is the store's
  `last_run_id` plus the runs this scheduler started and has not yet seen finish.
- "buffer_one" keeps its waiting fire time in this process's memory: it is started
  (with its own fire time's run id) when a run this scheduler started ends, or at the
  next pass (`check_now()` asks for one); a daemon that stops forgets it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pykka

from stageline.core import lifecycle
from stageline.core.errors import RunExistsError, RunNotFound, StagelineError
from stageline.core.schedule import (
    BUFFER,
    BUFFER_ONE,
    START,
    Schedule,
    due_fire_times,
    overlap_action,
)
from stageline.core.store import Store

from .base import StagelineActor
from .logs import library_logger
from .timers import TimerHandle

_log = logging.getLogger("stageline")

LATE_GRACE = 5.0
"""Seconds a fire time may be past when its pass runs and still be started on time."""


@dataclass(frozen=True, slots=True)
class _Due:
    """A schedule's timer fired: a pass for it (passes are idempotent: a stale timer's
    pass finds nothing due)."""

    schedule_id: str


@dataclass(frozen=True, slots=True)
class _Check:
    """Run a pass of these schedules now (None: every one)."""

    schedule_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Ping:
    """Answered once every message before it was handled (`Scheduler.wait_idle`)."""


@dataclass(eq=False)
class _Entry:
    """What the scheduler's actor keeps about one schedule."""

    schedule: Schedule
    factory: Any  # the PipelineFactory of its pipeline
    store: Store
    timer: TimerHandle | None = None
    buffered: float | None = None
    last_run_id: str | None = None
    started: set[str] = field(default_factory=set)  # run ids started here, not seen finished


class Scheduler:
    """Fires `schedules` with `factories` (a mapping by pipeline id, or an iterable), on
    `registry`'s clock and timers. `start()` records each schedule in its factory's store
    and runs a first pass; `stop()` disarms every timer. `on_start(context)` is called with
    each RunContext started. StagelineError for a schedule whose pipeline has no factory."""

    def __init__(
        self,
        registry: Any,
        factories: Mapping[str, Any] | Iterable[Any],
        schedules: Iterable[Schedule],
        *,
        on_start: Callable[[Any], Any] | None = None,
    ) -> None:
        self.registry = registry
        by_pipeline = _by_pipeline(factories)
        self.schedules = _checked(list(schedules), by_pipeline)
        self._entries = {
            s.id: _Entry(s, by_pipeline[s.pipeline_id], _store_of(s, by_pipeline[s.pipeline_id]))
            for s in self.schedules
        }
        self._on_start = on_start
        self._actor: pykka.ActorRef[Any] | None = None

    def start(self) -> None:
        """Save every schedule in its store, run a first pass (catching up what was missed
        while no daemon ran) and arm the timers; returns after that first pass."""
        if self._actor is None:
            self._actor = _SchedulerActor.start(self.registry, self._entries, self._on_start)
            self._actor.ask(_Check())

    def check_now(self) -> None:
        """Run a pass of every schedule now (starts a buffered fire time whose previous
        run ended); returns after it."""
        if self._actor is not None:
            self._actor.ask(_Check())

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every timer due by now has fired and its pass is done (tests on a
        ManualClock). False if that took longer than `timeout`."""
        for _ in range(2):  # a pass may arm a timer due at once (the clock moved on)
            if not self.registry.supervisor.timers.wait_idle(timeout):
                return False
            if self._actor is None:
                return True
            try:
                self._actor.ask(_Ping(), timeout=timeout)
            except pykka.Timeout:
                return False
        return True

    def stop(self) -> None:
        """Disarm every timer and stop the actor (runs already started go on)."""
        actor, self._actor = self._actor, None
        if actor is not None:
            actor.stop()

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _SchedulerActor(StagelineActor):
    """Does every pass of one Scheduler, one at a time."""

    def __init__(
        self, registry: Any, entries: dict[str, _Entry], on_start: Callable[[Any], Any] | None
    ) -> None:
        super().__init__()
        self.clock = registry.clock
        self.timers = registry.supervisor.timers
        self.entries = entries
        self.notify = on_start
        self.log = library_logger(None)

    def on_start(self) -> None:
        for entry in self.entries.values():
            _guarded(entry, "saving", functools.partial(self._save, entry))

    def _save(self, entry: _Entry) -> None:
        entry.store.save_schedule(self._row(entry))

    def on_stop(self) -> None:
        for entry in self.entries.values():
            if entry.timer is not None:
                entry.timer.cancel()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Due):
            entry = self.entries.get(message.schedule_id)
            if entry is not None:
                self._pass(entry)
        elif isinstance(message, _Check):
            for entry in self.entries.values():
                if message.schedule_id in (None, entry.schedule.id):
                    self._pass(entry)
        return None

    def _row(self, entry: _Entry) -> dict[str, Any]:
        schedule = entry.schedule
        return {
            "schedule_id": schedule.id, "pipeline_id": schedule.pipeline_id,
            "spec": schedule.spec, "overlap": schedule.overlap,
            "catchup_window": schedule.catchup_window,
            "next_fire": schedule.next_fire(self.clock.wall()),
        }  # fmt: skip

    def _pass(self, entry: _Entry) -> None:
        """Start the buffered fire time if its turn came, then every due one; re-arm for
        the first fire time after this pass's `now` (if the clock moved on meanwhile, the
        timer fires at once: no fire time falls between two passes)."""
        now = self.clock.wall()
        fired = False
        try:
            fired = _guarded(entry, "firing", lambda: self._fire_due(entry, now))
        finally:
            self._arm(entry, now, retry=not fired)

    def _fire_due(self, entry: _Entry, now: float) -> None:
        row = _stored_row(entry)
        last_fire = None if row is None else row["last_fire"]
        if row is not None and row["last_run_id"]:  # maybe started by another daemon
            entry.last_run_id = row["last_run_id"]
        if entry.buffered is not None and not self._previous_unfinished(entry):
            fire_time, entry.buffered = entry.buffered, None
            self._mark(entry, fire_time, self._start_run(entry, fire_time), now)
        for fire_time in due_fire_times(entry.schedule, last_fire, now, LATE_GRACE):
            self._fire(entry, fire_time, now)

    def _fire(self, entry: _Entry, fire_time: float, now: float) -> None:
        schedule = entry.schedule
        busy = schedule.overlap != "allow" and self._previous_unfinished(entry)
        action = overlap_action(schedule.overlap, busy)
        run_id = None
        if action == START:
            run_id = self._start_run(entry, fire_time)
        elif action == BUFFER:
            entry.buffered = fire_time  # the newest waits; an older one waiting is dropped
        event = {START: "schedule:fired", BUFFER: "schedule:buffered"}.get(action)
        self.log.info(event or "schedule:skipped", schedule_id=schedule.id,
                      run_id=schedule.run_id(fire_time))  # fmt: skip
        self._mark(entry, fire_time, run_id, now)

    def _mark(self, entry: _Entry, fire_time: float, run_id: str | None, now: float) -> None:
        next_fire = entry.schedule.next_fire(now)
        entry.store.mark_fired(entry.schedule.id, fire_time, run_id, next_fire)

    def _start_run(self, entry: _Entry, fire_time: float) -> str:
        """Start the run of `fire_time` (unless another daemon did); its run id."""
        run_id: str = entry.schedule.run_id(fire_time)
        entry.last_run_id = run_id
        try:
            context = entry.factory.prepare(run_id=run_id, state=entry.schedule.state)
        except RunExistsError:
            return run_id  # another daemon started this firing first
        entry.started.add(run_id)
        future = context.start()
        if entry.schedule.overlap == BUFFER_ONE:  # its end may start the one waiting
            ref, check = self.actor_ref, _Check(entry.schedule.id)
            future.add_done_callback(lambda _: _tell(ref, check))
        if self.notify is not None:
            self.notify(context)
        return run_id

    def _previous_unfinished(self, entry: _Entry) -> bool:
        """Whether a run of this schedule (the last one, or one started here) still runs."""
        candidates = {*entry.started, *filter(None, [entry.last_run_id])}
        for run_id in candidates:
            if _finished(entry.store, run_id):
                entry.started.discard(run_id)
            else:
                return True
        return False

    def _arm(self, entry: _Entry, now: float, *, retry: bool = False) -> None:
        """Arm the timer for the next fire time; after a failed pass (a store error),
        sooner: the pass is tried again within LATE_GRACE, so its fire time is not lost."""
        if entry.timer is not None:
            entry.timer.cancel()
        next_fire = entry.schedule.next_fire(now)
        if retry and next_fire is not None:
            next_fire = min(next_fire, now + LATE_GRACE / 2)
        if next_fire is None:
            entry.timer = None
            return
        ref, due = self.actor_ref, _Due(entry.schedule.id)
        delay = next_fire - self.clock.wall()
        entry.timer = self.timers.schedule(delay, lambda: _tell(ref, due))


def _by_pipeline(factories: Mapping[str, Any] | Iterable[Any]) -> dict[str, Any]:
    if isinstance(factories, Mapping):
        return dict(factories)
    found: list[Any] = list(factories)
    return {factory.pipeline.id: factory for factory in found}


def _checked(schedules: list[Schedule], factories: Mapping[str, Any]) -> list[Schedule]:
    """The schedules, or StagelineError naming each problem (unknown pipeline, twice an id)."""
    bad = [type(s).__name__ for s in schedules if not isinstance(s, Schedule)]
    if bad:
        raise StagelineError(f"schedules must be Schedule objects, got {', '.join(bad)}")
    problems = serving_problems(schedules, factories)
    if problems:
        raise StagelineError("; ".join(problems))
    return schedules


def serving_problems(schedules: list[Schedule], served: Iterable[str]) -> list[str]:
    """Why these schedules cannot be served beside factories of the `served` pipeline ids:
    a pipeline nobody serves, an id used twice (an empty list: they can)."""
    served = sorted(served)
    problems = [
        f"schedule {s.id!r} starts pipeline {s.pipeline_id!r}, which no factory serves "
        f"(served: {', '.join(served) or 'none'})"
        for s in schedules
        if s.pipeline_id not in served
    ]
    ids = [s.id for s in schedules]
    problems += [f"two schedules have the id {i!r}; keep one" for i in sorted(set(ids))
                 if ids.count(i) > 1]  # fmt: skip
    return problems


def _store_of(schedule: Schedule, factory: Any) -> Store:
    if factory.store is None:
        raise StagelineError(
            f"schedule {schedule.id!r}: the factory of pipeline {schedule.pipeline_id!r} "
            "needs one store (not a store_factory) to record the schedule's firings"
        )
    store: Store = factory.store
    return store


def _stored_row(entry: _Entry) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = entry.store.list_schedules()
    for row in rows:
        if row["schedule_id"] == entry.schedule.id:
            return row
    return None


def _finished(store: Store, run_id: str) -> bool:
    try:
        return store.get_run(run_id).status in lifecycle.FINISHED
    except RunNotFound:
        return True  # deleted (retention): long finished


def _guarded(entry: _Entry, what: str, action: Callable[[], Any]) -> bool:
    """Run `action`; a store's (or the application's) error is logged, never raised: one
    schedule's trouble never stops the others or the timers. Whether it went through."""
    try:
        action()
    except Exception:
        _log.exception("stageline scheduler: %s schedule %r failed", what, entry.schedule.id)
        return False
    return True


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass  # the scheduler stopped


__all__ = ["LATE_GRACE", "Scheduler"]
