"""Messages a RunActor receives: small immutable values, one per thing that happened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stageline.core.definition import Pipeline, Stage
from stageline.core.errors import StagelineError
from stageline.core.events import Event, PathNode
from stageline.core.results import ChildResult


@dataclass(frozen=True, slots=True)
class Begin:
    """Start (or continue) the run at `entry`."""

    entry: str
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class StepDone:
    """A step attempt returned (`patch`) or raised (`error`, `traceback`)."""

    token: int
    patch: Any = None
    error: BaseException | None = None
    traceback: str = ""
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class StepTimedOut:
    token: int


@dataclass(frozen=True, slots=True)
class RetryStep:
    step_id: str
    stage_run: int


@dataclass(frozen=True, slots=True)
class StageTimedOut:
    stage_run: int


@dataclass(frozen=True, slots=True)
class Abort:
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Drain:
    """Shutdown: finish and commit the current stage, then stop, leaving the run resumable."""


# --- child pipelines ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildScope:
    """Who a child pipeline is: its definition, path key and the path of its parent stage."""

    pipeline: Pipeline
    key: str
    prefix: tuple[PathNode, ...]
    token: int = 0
    """Unique per started child actor: the root hears only from children it knows live."""


@dataclass(frozen=True, slots=True)
class ChildStarted:
    """Told to the root before a child actor starts, so it precedes all the child says."""

    key: str
    token: int


@dataclass(frozen=True, slots=True)
class ChildEmit:
    """A child's event (seq 0) for the root to number and deliver: one sequence per run."""

    event: Event
    key: str
    token: int


@dataclass(frozen=True, slots=True)
class ChildStageEnded:
    """Asked of the root: conclude a child's stage (merge, route, commit) and say what next.

    `patches` are the steps' patches in definition order; for a stage with child pipelines,
    `children` holds their results instead. `error` means the stage failed; `started`
    False, that it never started (the child ran over its max_stage_runs), so it has no
    stage event to journal.
    """

    scope: ChildScope
    stage: Stage
    stage_runs: int
    patches: tuple[tuple[str, Any], ...] = ()
    children: dict[str, ChildResult] | None = None
    error: StagelineError | None = None
    started: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    """The root's answer to ChildStageEnded: "next" (with the run's new state), or the
    child ended "succeeded", "paused" or "failed"."""

    kind: str
    state: dict[str, Any]
    next_stage: str | None = None
    error: StagelineError | None = None


@dataclass(frozen=True, slots=True)
class ChildEnded:
    """Told to a parent: one of the children of its stage run `stage_run` ended.

    `status` is "succeeded", "paused", "failed", or "drained" (stopped between stages by
    registry.stop(); its position stays where it was committed).
    """

    child_id: str
    stage_run: int
    status: str
    error: StagelineError | None = None
