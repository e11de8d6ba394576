"""Pipeline, Stage, Step and Pause: the frozen values a user defines, validated as a whole.

Constructing a `Pipeline` checks every stage, step and child pipeline and raises one
`DefinitionError` listing every problem, so a user fixes a definition in one pass.
"""

from __future__ import annotations

import datetime as _dt
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .admission import Limit, limits_problems
from .errors import DefinitionError, RoutingError
from .text import is_utf8

_ID_RULE = "a non-empty string of valid UTF-8 without NUL"

MAX_WAIT = 100 * 365 * 86_400.0
"""The longest `Sleep(seconds=...)` or `Pause(expires_in=...)`: 100 years (a wake-up time
must stay a date every store and clock can write)."""


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


TERMINATE: Any = _Sentinel("TERMINATE")
"""A router returning this ends the run successfully now; later stages are skipped."""

DELETE: Any = _Sentinel("DELETE")
"""A patch value that removes its key from the state."""

Patch = Mapping[str, Any]
Action = Callable[..., Any]
Router = Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Step:
    """One unit of work: `action(state, ctx)` returns a patch or None."""

    id: str
    action: Action
    label: str | None = None
    timeout: float | None = None
    retries: int = 0
    retry_backoff: float = 0.0
    is_async: bool = field(init=False, default=False, repr=False, compare=False)

    def __init__(
        self,
        id: str,
        action: Action,
        *,
        label: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_backoff: float = 0.0,
    ) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "label", label if label is not None else id)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "retries", retries)
        object.__setattr__(self, "retry_backoff", retry_backoff)
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(action))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number `attempt` (1-based)."""
        return float(min(60.0, self.retry_backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class Stage:
    """Steps (or child pipelines) run concurrently, committed at once, then routed."""

    id: str
    order: int
    label: str | None = None
    steps: tuple[Step, ...] = ()
    pipelines: tuple[Pipeline, ...] = ()
    router: Router | None = None
    timeout: float | None = None

    def __init__(
        self,
        id: str,
        order: int,
        *,
        label: str | None = None,
        steps: Iterable[Step] = (),
        pipelines: Iterable[Pipeline] = (),
        router: Router | None = None,
        timeout: float | None = None,
    ) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "label", label if label is not None else id)
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "pipelines", tuple(pipelines))
        object.__setattr__(self, "router", router)
        object.__setattr__(self, "timeout", timeout)


@dataclass(frozen=True, slots=True)
class Pause:
    """A router's answer: commit, pause, and continue at `resume_at` when resumed.

    `expires_in` (seconds, measured from the stored `paused_on`, so across restarts): a
    run nobody resumed by then continues at stage `on_expiry` (its steps see
    `state[PIPELINE_DATA_KEY]["expired"] == True`) or, without `on_expiry`, ends
    "expired". Exactly one process acts (SPEC section 15).
    """

    resume_at: str
    timeout: float | None = None
    persist: bool = False
    expires_in: float | None = None
    on_expiry: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not _is_finite(self.expires_in, allow_none=True):
            problems.append(
                f"expires_in must be None or seconds >= 0 (at most {MAX_WAIT:.0f}: 100 years), "
                f"got {self.expires_in!r}"
            )
        if self.on_expiry is not None and self.expires_in is None:
            problems.append("on_expiry needs expires_in: say after how long the run expires")
        if problems:
            raise _bad_answer(f"Pause({self.resume_at!r})", problems)


@dataclass(frozen=True, slots=True)
class Sleep:
    """A router's answer: commit, sleep, and continue at `resume_at` when the time comes.

    Exactly one of `seconds` (from the commit) or `until` (an aware datetime). The run
    is stored "sleeping" with its `wake_at` and holds no thread and no actor; a
    `resume(run_id, patch=...)` wakes it early (SPEC section 15).
    """

    resume_at: str
    seconds: float | None = None
    until: _dt.datetime | None = None

    def __post_init__(self) -> None:
        problems = []
        if (self.seconds is None) == (self.until is None):
            problems.append("give exactly one of seconds= or until=")
        elif self.seconds is not None and not _is_finite(self.seconds, allow_none=False):
            problems.append(
                f"seconds must be a number >= 0 (at most {MAX_WAIT:.0f}: 100 years), "
                f"got {self.seconds!r}"
            )
        elif self.until is not None and not _is_aware(self.until):
            problems.append(
                f"until must be a timezone-aware datetime, got {self.until!r}; "
                "use datetime.now(timezone.utc) + timedelta(...)"
            )
        if problems:
            raise _bad_answer(f"Sleep({self.resume_at!r})", problems)

    def wake_at(self, now: float) -> float:
        """When the run wakes (wall-clock seconds), for a sleep committed at `now`."""
        if self.until is not None:
            return max(now, self.until.timestamp())
        return now + float(self.seconds or 0.0)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """An ordered list of stages; validated as a whole when constructed."""

    id: str
    stages: tuple[Stage, ...]
    label: str | None = None
    version: int = 1
    max_stage_runs: int = 10_000
    limits: tuple[Limit, ...] = ()
    """Admission limits (SPEC section 20): a run takes a slot of each before it runs."""
    _by_id: Mapping[str, Stage] = field(init=False, repr=False, compare=False)
    _next: Mapping[str, str | None] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        id: str,
        stages: Iterable[Stage],
        *,
        label: str | None = None,
        version: int = 1,
        max_stage_runs: int = 10_000,
        limits: Iterable[Limit] = (),
    ) -> None:
        stage_list = list(stages) if isinstance(stages, Iterable) else stages
        limit_list = list(limits) if isinstance(limits, Iterable) else [limits]
        problems = _pipeline_problems(id, stage_list, version, max_stage_runs)
        problems += limits_problems(limit_list)
        if problems:
            raise DefinitionError(id, problems)
        ordered = tuple(sorted(stage_list, key=lambda s: s.order))
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "stages", ordered)
        object.__setattr__(self, "label", label if label is not None else id)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "max_stage_runs", max_stage_runs)
        object.__setattr__(self, "limits", tuple(limit_list))
        object.__setattr__(self, "_by_id", {s.id: s for s in ordered})
        following = [s.id for s in ordered[1:]] + [None]
        object.__setattr__(
            self, "_next", dict(zip((s.id for s in ordered), following, strict=False))
        )

    @property
    def first_stage(self) -> Stage:
        return self.stages[0]

    def stage(self, stage_id: str) -> Stage:
        return self._by_id[stage_id]

    def has_stage(self, stage_id: object) -> bool:
        return isinstance(stage_id, str) and stage_id in self._by_id

    def next_stage_id(self, stage_id: str) -> str | None:
        """The stage after `stage_id` by order, or None past the last."""
        return self._next[stage_id]

    @property
    def stage_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.stages)


def _is_id(value: object) -> bool:
    """A non-empty string that every store can keep: valid UTF-8 (no lone surrogates) and
    no NUL character (PostgreSQL text cannot hold one)."""
    return isinstance(value, str) and value.strip() != "" and "\x00" not in value and is_utf8(value)


def _is_non_negative(value: object, allow_none: bool) -> bool:
    if value is None:
        return allow_none
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value >= 0


def _is_finite(value: object, allow_none: bool) -> bool:
    """None (if allowed), or a number of seconds from 0 to MAX_WAIT."""
    if not _is_non_negative(value, allow_none):
        return False
    return value is None or float(value) <= MAX_WAIT  # type: ignore[arg-type]


def _bad_answer(what: str, problems: list[str]) -> RoutingError:
    """A router built an invalid answer: the router raises this, which fails its stage."""
    return RoutingError(f"{what} is invalid: {'; '.join(problems)}")


def _is_aware(value: object) -> bool:
    return isinstance(value, _dt.datetime) and value.utcoffset() is not None


def _pipeline_problems(
    pipeline_id: object, stages: object, version: object, max_stage_runs: object
) -> list[str]:
    problems: list[str] = []
    if not _is_id(pipeline_id):
        problems.append(f"pipeline id must be {_ID_RULE}, got {pipeline_id!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        problems.append(f"version must be an integer >= 1, got {version!r}")
    if not isinstance(max_stage_runs, int) or max_stage_runs < 1:
        problems.append(f"max_stage_runs must be an integer >= 1, got {max_stage_runs!r}")
    if not isinstance(stages, list) or not stages:
        problems.append("a pipeline needs at least one Stage")
        return problems
    seen_ids: set[str] = set()
    seen_orders: dict[object, str] = {}
    for index, stage in enumerate(stages):
        if not isinstance(stage, Stage):
            problems.append(f"stages[{index}] is {type(stage).__name__}, expected a Stage")
            continue
        problems.extend(_stage_problems(stage, index, seen_ids, seen_orders))
        problems.extend(_self_containment(pipeline_id, stage))
    return problems


def _stage_problems(
    stage: Stage, index: int, seen_ids: set[str], seen_orders: dict[object, str]
) -> list[str]:
    problems: list[str] = []
    where = f"stage {stage.id!r}" if _is_id(stage.id) else f"stages[{index}]"
    if not _is_id(stage.id):
        problems.append(f"{where}: id must be {_ID_RULE}, got {stage.id!r}")
    elif stage.id in seen_ids:
        problems.append(f"{where}: duplicate stage id")
    else:
        seen_ids.add(stage.id)
    if not isinstance(stage.order, int) or isinstance(stage.order, bool):
        problems.append(f"{where}: order must be an integer, got {stage.order!r}")
    elif stage.order in seen_orders:
        problems.append(
            f"{where}: duplicate order {stage.order} (also used by {seen_orders[stage.order]!r})"
        )
    else:
        seen_orders[stage.order] = str(stage.id)
    if stage.steps and stage.pipelines:
        problems.append(f"{where}: has both steps and pipelines; give it one or the other")
    if not stage.steps and not stage.pipelines and stage.router is None:
        problems.append(f"{where}: has no steps, no pipelines and no router: nothing to do")
    if stage.router is not None and not callable(stage.router):
        problems.append(f"{where}: router must be callable, got {type(stage.router).__name__}")
    if not _is_non_negative(stage.timeout, allow_none=True):
        problems.append(f"{where}: timeout must be None or >= 0, got {stage.timeout!r}")
    problems.extend(_steps_problems(where, stage.steps))
    problems.extend(_children_problems(where, stage.pipelines))
    return problems


def _steps_problems(where: str, steps: tuple[Step, ...]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for index, step in enumerate(steps):
        if not isinstance(step, Step):
            problems.append(f"{where}: steps[{index}] is {type(step).__name__}, expected a Step")
            continue
        at = f"{where} step {step.id!r}" if _is_id(step.id) else f"{where} steps[{index}]"
        if not _is_id(step.id):
            problems.append(f"{at}: id must be {_ID_RULE}, got {step.id!r}")
        elif step.id in seen:
            problems.append(f"{at}: duplicate step id")
        else:
            seen.add(step.id)
        if not callable(step.action):
            problems.append(f"{at}: action must be callable, got {type(step.action).__name__}")
        if not _is_non_negative(step.timeout, allow_none=True):
            problems.append(f"{at}: timeout must be None or >= 0, got {step.timeout!r}")
        if not isinstance(step.retries, int) or not _is_non_negative(step.retries, False):
            problems.append(f"{at}: retries must be an integer >= 0, got {step.retries!r}")
        if not _is_non_negative(step.retry_backoff, allow_none=False):
            problems.append(f"{at}: retry_backoff must be >= 0, got {step.retry_backoff!r}")
    return problems


def _children_problems(where: str, pipelines: tuple[Pipeline, ...]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for index, child in enumerate(pipelines):
        if not isinstance(child, Pipeline):
            problems.append(
                f"{where}: pipelines[{index}] is {type(child).__name__}, expected a Pipeline"
            )
        elif child.id in seen:
            problems.append(f"{where}: duplicate child pipeline id {child.id!r}")
        elif child.limits:
            problems.append(
                f"{where}: child pipeline {child.id!r} has limits, which only a run's "
                "top-level pipeline may have (admission is per run): move them there"
            )
        else:
            seen.add(child.id)
    return problems


def _self_containment(pipeline_id: object, stage: Stage) -> list[str]:
    """A pipeline whose descendants include a pipeline with its own id contains itself."""
    stack: list[tuple[Pipeline, tuple[str, ...]]] = [
        (child, (str(pipeline_id), child.id))
        for child in stage.pipelines
        if isinstance(child, Pipeline)
    ]
    while stack:
        child, trail = stack.pop()
        if child.id == pipeline_id:
            return [f"stage {stage.id!r}: pipeline contains itself ({' -> '.join(trail)})"]
        for inner in child.stages:
            stack.extend((grand, (*trail, grand.id)) for grand in inner.pipelines)
    return []
