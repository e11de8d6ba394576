"""Admission control: concurrency limits, per key, with rates (SPEC section 20).

A pipeline lists its `Limit`s; a run of it needs one slot of each before it runs. A
limit may be partitioned by a `key(state) -> str` (each key has its own slots: one busy
customer never starves the others) and may carry a `rate=(n, seconds)` (at most `n`
starts per sliding window of `seconds`). `claims_of` turns a pipeline's limits and a
run's state into the `Claim`s a store checks and records, in one transaction, when it
admits the run (`Store.admit`); a run that may not start yet is committed "queued".

Pure: no threads, no I/O; a key function is the application's code and is called here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import DefinitionError, StagelineError
from .text import is_utf8

KeyFunction = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `max_running` runs hold a slot of this limit at once (per `key(state)`),
    and, with `rate=(n, seconds)`, at most `n` of them start per `seconds`.

    Limits are named across pipelines: two pipelines with `Limit("api", 5)` share the
    same five slots (each admission checks its own pipeline's `max_running`).
    """

    name: str
    max_running: int
    key: KeyFunction | None = None
    rate: tuple[int, float] | None = None

    def __init__(
        self,
        name: str,
        max_running: int,
        *,
        key: KeyFunction | None = None,
        rate: tuple[int, float] | None = None,
    ) -> None:
        problems = limit_problems(name, max_running, key, rate)
        if problems:
            raise DefinitionError(name, problems, what="limit")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "max_running", max_running)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "rate", None if rate is None else (rate[0], float(rate[1])))


@dataclass(frozen=True, slots=True)
class Claim:
    """What one limit asks of a run's admission: a slot of (`limit`, `key`), under
    `max_running`, and a start within `rate`."""

    limit: str
    key: str
    max_running: int
    rate: tuple[int, float] | None = None


def limit_problems(name: object, max_running: object, key: object, rate: object) -> list[str]:
    """Every problem of a Limit's arguments (empty: it is valid)."""
    problems = []
    if not isinstance(name, str) or not name.strip() or "\x00" in name or not is_utf8(name):
        problems.append(f"name must be a non-empty string without NUL, got {name!r}")
    if not isinstance(max_running, int) or isinstance(max_running, bool) or max_running < 1:
        problems.append(f"max_running must be an integer >= 1, got {max_running!r}")
    if key is not None and not callable(key):
        problems.append(f"key must be a function key(state) -> str, got {type(key).__name__}")
    if rate is not None and not _is_rate(rate):
        problems.append(f"rate must be (n, seconds) with n >= 1 and seconds > 0, got {rate!r}")
    return problems


def _is_rate(rate: object) -> bool:
    if not isinstance(rate, tuple) or len(rate) != 2:
        return False
    n, seconds = rate
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return False
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return False
    return seconds > 0 and math.isfinite(seconds)


def limits_problems(limits: Iterable[object]) -> list[str]:
    """The problems of a pipeline's `limits`: not Limits, or a name twice."""
    problems, seen = [], set()
    for index, limit in enumerate(limits):
        if not isinstance(limit, Limit):
            problems.append(f"limits[{index}] is {type(limit).__name__}, expected a Limit")
        elif limit.name in seen:
            problems.append(f"limit {limit.name!r} is given twice")
        else:
            seen.add(limit.name)
    return problems


def claims_of(limits: Iterable[Limit], state: Mapping[str, Any], run_id: str) -> tuple[Claim, ...]:
    """The claims a run with `state` makes under `limits`; AdmissionError if a key function
    raises or returns something other than a non-empty string."""
    return tuple(
        Claim(limit.name, _key(limit, state, run_id), limit.max_running, limit.rate)
        for limit in limits
    )


def _key(limit: Limit, state: Mapping[str, Any], run_id: str) -> str:
    if limit.key is None:
        return ""
    try:
        key = limit.key(state)
    except Exception as exc:
        raise AdmissionError(
            f"the key function of limit {limit.name!r} raised {exc!r} for run {run_id!r}; "
            "it must return a string for every state the pipeline starts with"
        ) from exc
    if not isinstance(key, str) or not key or "\x00" in key or not is_utf8(key):
        raise AdmissionError(
            f"the key function of limit {limit.name!r} returned {key!r} for run {run_id!r}; "
            "return a non-empty string (e.g. a customer id)"
        )
    return key


class AdmissionError(StagelineError):
    """A run's limits cannot be evaluated (its key function failed): the run fails."""

    kind = "admission"
