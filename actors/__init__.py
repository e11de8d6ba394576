"""Actors: the only place stageline runs threads (runs, workers, timers)."""

from .context import RunContext, RunResult
from .factory import PipelineFactory
from .registry import Registry

__all__ = ["PipelineFactory", "Registry", "RunContext", "RunResult"]
