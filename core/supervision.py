"""Supervision decisions: when a failed or orphaned run is taken up again.

Pure logic; the registry (stageline.actors.registry) carries the decisions out.

- A failed run restarts from its failed stage (committed stages never run again) after
  `RetryPolicy.delay(n)` for its n-th restart, while n <= `max_restarts`.
- `retry_on` is matched against what caused the failure, by the exception classes the
  failure recorded (`error_to_record`'s `types`, most derived first, "module.qualname"):
  the failed steps' exceptions (a step that timed out: `StepTimeout`) when steps failed,
  else the router's exception, else the error itself (a stage timeout's StageError, a
  RoutingError). Any one of them matching is enough.
- Every failed attempt's error record is kept in the run's reserved state key
  (`PIPELINE_DATA_KEY` -> "failures") by the restart commit, so it survives the process;
  the failure commit of a restarted run lists them all under its error's "attempts".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import lifecycle
from .errors import StagelineError, error_from_record, type_name
from .patch import PIPELINE_DATA_KEY
from .store import RunRecord

FAILURES = "failures"
RECOVERIES = "recoveries"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a Registry restarts failed runs (`Registry(supervision=RetryPolicy(...))`).

    The n-th restart of a run waits `backoff * 2**(n-1)` seconds, capped at
    `max_backoff`; after `max_restarts` restarts the run stays failed. Only failures
    caused by an instance of a class in `retry_on` are restarted (see the module doc).
    """

    max_restarts: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        retry_on: Any = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        elif isinstance(retry_on, list | set | frozenset):
            retry_on = tuple(retry_on)
        object.__setattr__(self, "retry_on", retry_on)
        problems = []
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            problems.append(f"max_restarts must be an int >= 0, got {self.max_restarts!r}")
        if not isinstance(self.backoff, int | float) or self.backoff < 0:
            problems.append(f"backoff must be seconds >= 0, got {self.backoff!r}")
        if not isinstance(self.max_backoff, int | float) or self.max_backoff < 0:
            problems.append(f"max_backoff must be seconds >= 0, got {self.max_backoff!r}")
        if not isinstance(retry_on, tuple) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in retry_on
        ):
            problems.append(f"retry_on must be a tuple of exception classes, got {retry_on!r}")
        if problems:
            raise StagelineError("invalid RetryPolicy: " + "; ".join(problems))

    def delay(self, restart: int) -> float:
        """Seconds to wait before the `restart`-th restart (1 for the first)."""
        return float(min(self.backoff * 2 ** (restart - 1), self.max_backoff))

    def matches(self, error: Mapping[str, Any] | None) -> bool:
        """Is the failure described by this error record one `retry_on` covers?"""
        wanted = {type_name(cls) for cls in self.retry_on}
        return any(wanted.intersection(types) for types in causes(error))

    def next_delay(self, record: RunRecord, *, crashed: bool = False) -> float | None:
        """For a run just failed: seconds until its restart, or None to leave it failed.

        A run whose actor died of a runtime bug (`crashed`) is restarted whatever
        `retry_on` says, within `max_restarts`.
        """
        restart = restarts(record.state) + 1
        if restart > self.max_restarts or not (crashed or self.matches(record.error)):
            return None
        return self.delay(restart)


def causes(error: Mapping[str, Any] | None) -> list[list[str]]:
    """The recorded classes of each cause of a failure (see the module doc)."""
    if not error:
        return []
    steps = [list(s.get("types") or ()) for s in error.get("steps") or ()]
    if steps:
        return steps
    return [list(error.get("types") or ())]


def failures(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The error records of a run's earlier failed attempts, oldest first."""
    data = state.get(PIPELINE_DATA_KEY)
    if not isinstance(data, dict):
        return []
    return list(data.get(FAILURES) or ())


def restarts(state: Mapping[str, Any]) -> int:
    """How many times the run was restarted after a failure (by policy or by hand)."""
    return len(failures(state))


def with_failure(state: dict[str, Any], error: Mapping[str, Any] | None) -> dict[str, Any]:
    """`state` with one more failed attempt recorded (a new dict; `state` is untouched)."""
    attempt = {k: v for k, v in (error or {}).items() if k != "attempts"}
    data = state.get(PIPELINE_DATA_KEY)
    data = dict(data) if isinstance(data, dict) else {}
    data[FAILURES] = [*failures(state), attempt]
    return {**state, PIPELINE_DATA_KEY: data}


def with_attempts(error: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """A failure's error record, listing every attempt when the run was restarted."""
    earlier = failures(state)
    if not earlier:
        return error
    return {**error, "attempts": [*earlier, error]}


def attempt_errors(error: Mapping[str, Any] | None, last: Any) -> tuple[Any, ...]:
    """Every failed attempt's error, oldest first, ending with `last` (the live error)."""
    earlier = list((error or {}).get("attempts") or ())[:-1]
    return (*(error_from_record(e) for e in earlier), last)


def recoveries(state: Mapping[str, Any]) -> int:
    """How many times the run was recovered since it last committed a stage."""
    data = state.get(PIPELINE_DATA_KEY)
    count = data.get(RECOVERIES, 0) if isinstance(data, dict) else 0
    return count if type(count) is int else 0


def with_recoveries(state: dict[str, Any], count: int) -> dict[str, Any]:
    """`state` with its recovery count set to `count` (0 removes it); a new dict."""
    data = state.get(PIPELINE_DATA_KEY)
    if count == 0 and not (isinstance(data, dict) and RECOVERIES in data):
        return state
    data = {k: v for k, v in data.items() if k != RECOVERIES} if isinstance(data, dict) else {}
    if count:
        data[RECOVERIES] = count
    if data:
        return {**state, PIPELINE_DATA_KEY: data}
    return {k: v for k, v in state.items() if k != PIPELINE_DATA_KEY}


def over_recoveries(record: RunRecord, max_recoveries: int | None) -> bool:
    """Would one more recovery take the run over `max_recoveries` without progress?"""
    return max_recoveries is not None and recoveries(record.state) >= max_recoveries


def is_orphaned(record: RunRecord, now: float) -> bool:
    """A run `recover` takes over at `now`.

    A running run with no owner (driven without a registry) or whose owner's lease ended
    by `now`; a pending run only if a registry created it and its lease ended (a run
    prepared without a registry may still be started by whoever prepared it); a queued
    run whose registry's lease ended (it waits for a slot in the taker's registry).
    """
    expired = record.lease_until is None or record.lease_until <= now
    if record.status == lifecycle.RUNNING:
        return record.owner is None or expired
    if record.status in (lifecycle.PENDING, lifecycle.QUEUED):
        return record.owner is not None and expired
    return False
