"""Schedule: a pipeline started on a cron or a fixed period, and the pure math of its firings.

Rules kept here (the scheduler in actors/scheduler.py only feeds them the clock and the
store's `last_fire`, and carries out what they decide):

- Fire times are UTC wall-clock seconds. `every=N` fires at the multiples of N seconds
  since the Unix epoch, so every daemon computes the same ones; `cron` fires at the
  times of a five-field cron expression read in UTC (no daylight saving time).
- A firing's run id is `f"{id}@{fire_time:%Y%m%dT%H%M%SZ}"`: the idempotency key that
  lets many daemons on one store start it exactly once. `every` is whole seconds for
  that reason: two fire times never share a run id.
- At a pass at `now`, the fire times due are those `t` with `last_fire < t <= now` and
  `now - t <= catchup_window` (missed ones are caught up once each, older ones skipped).
  A schedule never fired (`last_fire` None) never back-fills: only `t == now` is due.
  `grace` widens the window for a timer that fires a little late.
- `overlap` decides what a due fire time does while the schedule's previous run is
  unfinished: "skip" (no run), "allow" (start anyway), "buffer_one" (keep the newest
  one waiting and start it once the previous run ends).

The cron library (croniter) is imported only in `_cron_next`, lazily.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

from .errors import DefinitionError
from .patch import PIPELINE_DATA_KEY, copy_state, describe, find_unstorable
from .text import is_utf8

SKIP: Final = "skip"
ALLOW: Final = "allow"
BUFFER_ONE: Final = "buffer_one"
OVERLAPS: Final = (SKIP, ALLOW, BUFFER_ONE)

START: Final = "start"
BUFFER: Final = "buffer"
"""What `overlap_action` answers, with SKIP."""

RUN_ID_TIME: Final = "%Y%m%dT%H%M%SZ"
_ID_RULE: Final = "a non-empty string of valid UTF-8 without NUL"


class ScheduleError(DefinitionError):
    """A Schedule is invalid; `problems` lists every problem found."""

    def __init__(self, schedule_id: object, problems: list[str]) -> None:
        super().__init__(schedule_id, problems)
        self.schedule_id = schedule_id
        lines = "\n".join(f"  - {p}" for p in problems)
        self.args = (
            f"schedule {schedule_id!r} is invalid ({len(problems)} problem(s)); "
            f"fix these and construct it again:\n{lines}",
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """Start a run of `pipeline_id` at each fire time of `cron` or `every` (exactly one).

    `cron`: a five-field cron expression ("0 9 * * 1-5"), read in UTC. `every`: a period
    in whole seconds (fire times are its multiples since the epoch). `state`: the initial
    state patch of each run. `overlap`: "skip", "allow" or "buffer_one".
    `catchup_window`: seconds; after downtime, fire times missed within it are started
    once each. Raises ScheduleError (a DefinitionError) listing every problem.
    """

    id: str
    pipeline_id: str
    cron: str | None = field(default=None, kw_only=True)
    every: float | None = field(default=None, kw_only=True)
    state: Mapping[str, Any] | None = field(default=None, kw_only=True, hash=False)
    overlap: str = field(default=SKIP, kw_only=True)
    catchup_window: float = field(default=0.0, kw_only=True)

    def __post_init__(self) -> None:
        problems = schedule_problems(self)
        if problems:
            raise ScheduleError(self.id, problems)
        if self.state is not None:
            object.__setattr__(self, "state", copy_state(dict(self.state)))

    @property
    def spec(self) -> str:
        """How the store and `stageline schedules` show it: "cron 0 9 * * 1-5", "every 60s"."""
        if self.cron is not None:
            return f"cron {' '.join(self.cron.split())}"
        return f"every {self.every:g}s"

    def next_fire(self, after: float) -> float | None:
        """The first fire time strictly after `after` (None: the cron never fires again)."""
        if self.every is not None:
            return float((math.floor(after / self.every) + 1) * self.every)
        assert self.cron is not None
        return _cron_next(self.cron, after)

    def fire_times(self, start: float, end: float) -> list[float]:
        """The fire times `t` with `start <= t <= end`, oldest first."""
        found: list[float] = []
        t = self.next_fire(start - 1.0)
        while t is not None and t <= end:
            if t >= start:
                found.append(t)
            t = self.next_fire(t)
        return found

    def run_id(self, fire_time: float) -> str:
        """The run id of the firing at `fire_time` (the idempotency key of the start)."""
        return schedule_run_id(self.id, fire_time)


def schedule_run_id(schedule_id: str, fire_time: float) -> str:
    """`f"{schedule_id}@{fire_time:%Y%m%dT%H%M%SZ}"`, the fire time read in UTC."""
    return f"{schedule_id}@{_dt.datetime.fromtimestamp(fire_time, _dt.UTC):{RUN_ID_TIME}}"


def due_fire_times(
    schedule: Schedule, last_fire: float | None, now: float, grace: float = 0.0
) -> list[float]:
    """The fire times a pass at `now` starts, oldest first (see the module's rules)."""
    window = grace if last_fire is None else max(schedule.catchup_window, grace)
    times = schedule.fire_times(now - window, now)
    return [t for t in times if last_fire is None or t > last_fire]


def overlap_action(overlap: str, previous_unfinished: bool) -> str:
    """START, SKIP or BUFFER: what a due fire time does under `overlap`."""
    if not previous_unfinished or overlap == ALLOW:
        return START
    return BUFFER if overlap == BUFFER_ONE else SKIP


def schedule_problems(schedule: Schedule) -> list[str]:
    """Every problem of `schedule`, as sentences (empty: it is valid)."""
    problems = [
        f"{name} must be {_ID_RULE}, got {value!r}"
        for name, value in (("id", schedule.id), ("pipeline_id", schedule.pipeline_id))
        if not _good_id(value)
    ]
    problems += _timing_problems(schedule.cron, schedule.every)
    if schedule.overlap not in OVERLAPS:
        words = ", ".join(repr(word) for word in OVERLAPS)
        problems.append(f"overlap must be one of {words}, got {schedule.overlap!r}")
    window = schedule.catchup_window
    if not _number(window) or not math.isfinite(window) or window < 0:
        problems.append(f"catchup_window must be seconds >= 0, got {window!r}")
    problems += _state_problems(schedule.state)
    return problems


def _good_id(value: object) -> bool:
    return (
        isinstance(value, str) and bool(value.strip()) and "\x00" not in value and (is_utf8(value))
    )


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _timing_problems(cron: object, every: object) -> list[str]:
    if (cron is None) == (every is None):
        return ["give exactly one of cron (a five-field cron expression) or every (seconds)"]
    if every is not None:
        if not _number(every) or not float(every).is_integer() or float(every) < 1:
            return [f"every must be a whole number of seconds >= 1, got {every!r}"]
        return []
    if not isinstance(cron, str) or len(cron.split()) != 5:
        return [f"cron must be five fields (minute hour day month weekday), got {cron!r}"]
    return _cron_problems(cron)


def _cron_problems(cron: str) -> list[str]:
    try:
        if _cron_next(cron, 0.0) is None:
            return [f"cron {cron!r} never fires"]
    except ValueError as exc:  # croniter's errors derive from ValueError
        return [f"cron {cron!r} is not a valid cron expression: {exc}"]
    return []


def _state_problems(state: object) -> list[str]:
    if state is None:
        return []
    if not isinstance(state, Mapping):
        return [f"state must be a dict (an initial state patch) or None, got {state!r}"]
    if PIPELINE_DATA_KEY in state:
        return [f"state may not use the reserved key {PIPELINE_DATA_KEY!r}"]
    problem = find_unstorable(dict(state))
    if problem is not None:
        return [f"state cannot be stored at {problem[0]!r}: {describe(problem[1])}"]
    return []


def _cron_next(expression: str, after: float) -> float | None:
    """croniter's next time strictly after `after`, in UTC (None: it never fires)."""
    from croniter import CroniterBadDateError, croniter

    start = _dt.datetime.fromtimestamp(after, _dt.UTC)
    try:
        return float(croniter(expression, start).get_next(float))
    except CroniterBadDateError:
        return None


__all__ = [
    "ALLOW",
    "BUFFER",
    "BUFFER_ONE",
    "OVERLAPS",
    "SKIP",
    "START",
    "Schedule",
    "ScheduleError",
    "due_fire_times",
    "overlap_action",
    "schedule_problems",
    "schedule_run_id",
]
