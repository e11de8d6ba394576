"""RunDeps: what a run's actors need from their factory (collaborators, not run state)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stageline.core.clock import Clock
from stageline.core.definition import Pipeline
from stageline.core.results import RunResult
from stageline.core.store import RunRecord, Store

from .container import Container
from .emitter import Emitter
from .timers import TimerService
from .workers import Workers


@dataclass(frozen=True, slots=True)
class RunDeps:
    """What a RunActor needs from its factory: collaborators, not run state."""

    pipeline: Pipeline
    store: Store
    clock: Clock
    timers: TimerService
    workers: Workers
    emitter: Emitter
    logger: Any
    container: Container
    on_commit: Callable[[RunRecord], None]
    on_end: Callable[[RunResult | None, BaseException | None, Any, RunRecord], None]
    max_bundle_bytes: int
    live_window: bool = False
    """True when a registry holds paused runs live (and exports their artifacts later)."""
