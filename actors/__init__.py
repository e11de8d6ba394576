"""Actors: the only place stageline runs threads (runs, workers, timers)."""

from .context import RunContext, RunResult
from .factory import PipelineFactory

__all__ = ["PipelineFactory", "RunContext", "RunResult"]
