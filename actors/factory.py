"""PipelineFactory: makes RunContexts for one pipeline; it holds no run state itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import uuid6

from stageline.core import lifecycle
from stageline.core.clock import Clock, SystemClock
from stageline.core.definition import Pipeline
from stageline.core.errors import RoutingError, StagelineError
from stageline.core.patch import PIPELINE_DATA_KEY, copy_state, describe, find_unstorable
from stageline.core.store import RunRecord, Store

from .context import RunContext
from .emitter import Emitter
from .logs import EventLogger
from .run import RunDeps
from .runtime import Runtime, runtime_for

InitialState = Callable[[], Mapping[str, Any]] | Mapping[str, Any] | None


class PipelineFactory:
    """Prepares and resumes runs of `pipeline` against a store.

    Give exactly one of `store` (serving many runs) or `store_factory(run_id)`; with
    neither, runs live in a fresh MemoryStore. `clock` (default: system time) drives step
    timeouts and retry backoff; a registry's clock wins when a registry is given.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        store: Store | None = None,
        store_factory: Callable[[str], Store] | None = None,
        initial_state: InitialState = None,
        registry: Any = None,
        logger: Any = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(pipeline, Pipeline):
            raise StagelineError(f"PipelineFactory needs a Pipeline, got {type(pipeline).__name__}")
        if store is not None and store_factory is not None:
            raise StagelineError("give PipelineFactory either store or store_factory, not both")
        if store is None and store_factory is None:
            from stageline.stores.memory import MemoryStore

            store = MemoryStore()
        self.pipeline = pipeline
        self.store = store
        self.store_factory = store_factory
        self.initial_state = initial_state
        self.registry = registry
        self.logger = logger
        self._runtime: Runtime = runtime_for(
            getattr(registry, "clock", None) or clock or SystemClock()
        )

    @property
    def clock(self) -> Clock:
        return self._runtime.clock

    def store_for(self, run_id: str) -> Store:
        """The store that holds `run_id`."""
        if self.store is not None:
            return self.store
        assert self.store_factory is not None
        return self.store_factory(run_id)

    def prepare(self, entry: str | None = None, run_id: str | None = None) -> RunContext:
        """A new run starting at stage `entry` (default: the first); nothing runs yet."""
        entry = self._entry(entry)
        run_id = self._run_id(run_id)
        now = self.clock.wall()
        record = RunRecord(
            run_id=run_id,
            pipeline_id=self.pipeline.id,
            pipeline_version=self.pipeline.version,
            status=lifecycle.PENDING,
            state=self._initial_state(),
            stage=entry,
            created_at=now,
            updated_at=now,
        )
        store = self.store_for(run_id)
        store.create_run(record)
        return RunContext(lambda ctx: self._deps(ctx, store), record, entry)

    def _entry(self, entry: str | None) -> str:
        if entry is None:
            return self.pipeline.first_stage.id
        if not self.pipeline.has_stage(entry):
            raise RoutingError(
                f"entry {entry!r} is not a stage of pipeline {self.pipeline.id!r}; "
                f"known stages: {', '.join(self.pipeline.stage_ids)}"
            )
        return entry

    def _run_id(self, run_id: str | None) -> str:
        if run_id is None:
            return str(uuid6.uuid7())
        if not isinstance(run_id, str) or not run_id or "\x00" in run_id:
            raise StagelineError(f"run_id must be a non-empty string without NUL, got {run_id!r}")
        return run_id

    def _initial_state(self) -> dict[str, Any]:
        source = self.initial_state
        value = source() if callable(source) else source
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise StagelineError(
                f"initial_state must be a dict (or return one), got {type(value).__name__}"
            )
        state: dict[str, Any] = copy_state(dict(value))
        if PIPELINE_DATA_KEY in state:
            raise StagelineError(
                f"initial_state may not use the reserved key {PIPELINE_DATA_KEY!r}"
            )
        problem = find_unstorable(state)
        if problem is not None:
            raise StagelineError(
                f"initial_state cannot be stored at {problem[0]!r}: {describe(problem[1])}"
            )
        return state

    def _deps(self, context: RunContext, store: Store) -> RunDeps:
        return RunDeps(
            pipeline=self.pipeline,
            store=store,
            clock=self._runtime.clock,
            timers=self._runtime.timers,
            workers=self._runtime.workers,
            emitter=Emitter(EventLogger(self.logger)),
            logger=self.logger,
            on_status=context._set_status,
            on_end=context._ended,
        )
