"""Messages a RunActor receives: small immutable values, one per thing that happened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
