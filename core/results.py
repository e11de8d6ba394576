"""RunResult and ChildResult: what a finished (or paused) run reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checkpoint import Checkpoint
from .lifecycle import SUCCEEDED


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of `run()`: step and stage failures are results, not exceptions."""

    run_id: str
    pipeline_id: str
    status: str
    state: dict[str, Any]
    checkpoint: Checkpoint | None = None
    error: Any = None
    attempts: tuple[Any, ...] = ()
    """When failed: every failed attempt's error, oldest first, ending with `error`
    (more than one when a registry restarted the run; see docs/supervision.md)."""

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED


@dataclass(frozen=True, slots=True)
class ChildResult:
    """How a child pipeline ended, as its parent's router sees it."""

    status: str
    error: Any = None
