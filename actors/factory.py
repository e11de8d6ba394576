"""PipelineFactory: prepares and resumes runs of one pipeline; it holds no run state."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from stageline.core import children as kids
from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core.checkpoint import Checkpoint, checkpoint_of, decode_bundle
from stageline.core.clock import Clock, SystemClock
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.definition import Pipeline
from stageline.core.errors import (
    BundleError,
    CheckpointCorrupt,
    CheckpointMismatch,
    CheckpointNotFound,
    ConflictError,
    RoutingError,
    RunExpired,
    RunNotFound,
    RunNotPaused,
    RunStateError,
    StagelineError,
)
from stageline.core.events import Event, PathNode
from stageline.core.patch import (
    PIPELINE_DATA_KEY,
    check_patch,
    copy_state,
    describe,
    find_unstorable,
    merge,
)
from stageline.core.store import RunRecord, Store, commit_from
from stageline.core.text import is_utf8

from .container import Container
from .context import RunContext, _NotSettled
from .emitter import Emitter
from .logs import EventLogger
from .run import RunDeps
from .runtime import Runtime, runtime_for


class _StaleCopy(Exception):
    """A live paused copy is older than the store's run (resumed and paused elsewhere)."""


InitialState = Callable[[], Mapping[str, Any]] | Mapping[str, Any] | None
Migration = Callable[[dict[str, Any]], dict[str, Any]]


class PipelineFactory:
    """Prepares and resumes runs of `pipeline` against a store.

    Give exactly one of `store` (serving many runs) or `store_factory(run_id)`; with
    neither, runs live in a fresh MemoryStore. With a `registry`, paused runs stay live
    for their window and resume through the fast path; the registry's clock drives every
    timer. Without one, `clock` (default: system time) does.
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
        max_bundle_bytes: int = DEFAULT_MAX_BYTES,
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
        self.max_bundle_bytes = getattr(registry, "max_bundle_bytes", max_bundle_bytes)
        self._migrations: dict[int, Migration] = {}
        registry_runtime = getattr(registry, "_runtime", None)
        self._runtime: Runtime = registry_runtime or runtime_for(clock or SystemClock())
        if registry is not None:
            registry._register(self)  # so that registry.retry(run_id) finds the pipeline

    @property
    def clock(self) -> Clock:
        return self._runtime.clock

    def store_for(self, run_id: str) -> Store:
        """The store that holds `run_id`."""
        if self.store is not None:
            return self.store
        assert self.store_factory is not None
        return self.store_factory(run_id)

    def add_migration(self, from_version: int, migrate: Migration) -> None:
        """Let runs paused under pipeline version `from_version` resume under this one.

        `migrate(state) -> state` is applied once, in the resume's compare-and-set.
        """
        if not callable(migrate):
            raise StagelineError("a migration must be callable: migrate(state) -> state")
        self._migrations[from_version] = migrate

    # --- new runs ---------------------------------------------------------------------

    def prepare(
        self,
        entry: str | None = None,
        run_id: str | None = None,
        *,
        state: Mapping[str, Any] | None = None,
    ) -> RunContext:
        """A new run starting at stage `entry` (default: the first); nothing runs yet.

        `state`, if given, is a patch merged over the factory's initial state (how
        `stageline start --state JSON` seeds a run).
        """
        entry = self._entry(entry)
        run_id = self._run_id(run_id)
        initial = self._initial_state()
        seed = check_patch(state, f"initial state patch for run {run_id!r}")
        now = self.clock.wall()
        record = RunRecord(
            run_id=run_id,
            pipeline_id=self.pipeline.id,
            pipeline_version=self.pipeline.version,
            status=lifecycle.PENDING,
            state=merge(initial, seed) if seed else initial,
            stage=entry,
            created_at=now,
            updated_at=now,
            **self._lease(),
        )
        store = self.store_for(run_id)
        store.create_run(record)
        return self._context(store, record, entry, Container(run_id), resumed=False)

    def _entry(self, entry: str | None) -> str:
        if entry is None:
            return str(self.pipeline.first_stage.id)
        if not self.pipeline.has_stage(entry):
            raise RoutingError(
                f"entry {entry!r} is not a stage of pipeline {self.pipeline.id!r}; "
                f"known stages: {', '.join(self.pipeline.stage_ids)}"
            )
        return entry

    def _run_id(self, run_id: str | None) -> str:
        if run_id is None:
            import uuid6  # deferred: it costs a cold start ~20 ms

            return str(uuid6.uuid7())
        if not isinstance(run_id, str) or not run_id or "\x00" in run_id or not is_utf8(run_id):
            raise StagelineError(
                f"run_id must be a non-empty string of valid UTF-8 without NUL, got {run_id!r}"
            )
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

    # --- resuming ---------------------------------------------------------------------

    def resume(self, run_id: str, patch: Mapping[str, Any] | None = None) -> RunContext:
        """Continue a paused run at its `resume_at`, committing `patch` with the claim.

        Fast path: while the registry still holds the run, the same RunContext comes back
        (no store read, no decoding). Slow path: the checkpoint is read, validated and the
        run rebuilt from committed state and its bundle. Of two racing resumes exactly one
        wins; the other raises RunNotPaused.
        """
        checked = check_patch(patch, f"resume patch for run {run_id!r}")
        if self.registry is not None:
            live: RunContext | None = self.registry._lookup(run_id)
            same = live is not None and (
                live._deps.pipeline is self.pipeline or live._deps.pipeline == self.pipeline
            )
            if live is not None and not same:
                self.registry._forget(live)  # another definition or version: use the store
            if live is not None and same:
                store = live._deps.store
                try:
                    live._claim_resume(
                        lambda record: self._claim(store, record, checked, None, fast=True)
                    )
                    self.registry._resumed_fast()
                    return live
                except (_StaleCopy, _NotSettled):
                    # Another process resumed it since (it may be paused again, later on):
                    # this process's copy is out of date; the store decides.
                    self.registry._forget(live)
        return self._resume_from_store(run_id, checked)

    def _resume_from_store(self, run_id: str, patch: Mapping[str, Any] | None) -> RunContext:
        store = self.store_for(run_id)
        record = self._paused_record(store, run_id)
        checkpoint = checkpoint_of(record, self.pipeline.id)  # from this read: no second one
        migrate = self._migration_for(checkpoint)
        if not self.pipeline.has_stage(checkpoint.resume_at):
            raise CheckpointMismatch(
                f"run {run_id!r} resumes at stage {checkpoint.resume_at!r}, which pipeline "
                f"{self.pipeline.id!r} v{self.pipeline.version} does not have; known stages: "
                f"{', '.join(self.pipeline.stage_ids)}"
            )
        kids.check_positions(self.pipeline, kids.positions(record.state), run_id)
        container = Container(run_id, self._artifacts(checkpoint))
        claimed = self._claim(store, record, patch, migrate)
        return self._context(store, claimed, checkpoint.resume_at, container, resumed=True)

    def _paused_record(self, store: Store, run_id: str) -> RunRecord:
        try:
            record = store.load_run(run_id)
        except RunNotFound as exc:
            raise CheckpointNotFound(
                f"no run {run_id!r} in the store, so no checkpoint to resume from"
            ) from exc
        if record.pipeline_id != self.pipeline.id:
            raise CheckpointMismatch(
                f"run {run_id!r} belongs to pipeline {record.pipeline_id!r}, not "
                f"{self.pipeline.id!r}; resume it with that pipeline's factory"
            )
        if record.status == lifecycle.EXPIRED:
            raise RunExpired(
                f"run {run_id!r} stayed paused past the registry's checkpoint_ttl and expired; "
                "it cannot be resumed (its committed state is still readable)"
            )
        if record.status != lifecycle.PAUSED:
            raise RunNotPaused(
                f"run {run_id!r} is {record.status!r}, not paused; only a paused run resumes"
            )
        return record

    def _migration_for(self, checkpoint: Checkpoint) -> Migration | None:
        if checkpoint.pipeline_version == self.pipeline.version:
            return None
        migrate = self._migrations.get(checkpoint.pipeline_version)
        if migrate is None:
            raise CheckpointMismatch(
                f"run {checkpoint.run_id!r} paused under {self.pipeline.id!r} version "
                f"{checkpoint.pipeline_version}, this factory has version "
                f"{self.pipeline.version}; register factory.add_migration("
                f"{checkpoint.pipeline_version}, migrate) to resume it"
            )
        return migrate

    def _artifacts(self, checkpoint: Checkpoint) -> dict[str, dict[str, Any]]:
        if checkpoint.container_bundle is None:
            return {}
        try:
            artifacts: dict[str, dict[str, Any]] = decode_bundle(
                checkpoint.container_bundle, checkpoint.run_id, max_bytes=self.max_bundle_bytes
            )
        except BundleError as exc:
            raise CheckpointCorrupt(f"the bundle in the checkpoint is unusable: {exc}") from exc
        return artifacts

    def _claim(
        self,
        store: Store,
        record: RunRecord,
        patch: Mapping[str, Any] | None,
        migrate: Migration | None,
        *,
        fast: bool = False,
    ) -> RunRecord:
        """paused -> running with the patch, in one compare-and-set on the run's version."""
        state = record.state
        if migrate is not None:
            state = self._migrated(record, migrate)
        if patch:
            state = merge(state, patch)
        state = kids.release_paused(state)  # paused children run on, from this commit on
        now = self.clock.wall()
        # The resumed segment's pipeline:start rides on the claim: one commit, not two.
        start = Event(
            name=ev.PIPELINE_START,
            run_id=record.run_id,
            path=(PathNode(self.pipeline.id, None),),
            seq=record.last_seq + 1,
            ts=now,
            pipeline_id=self.pipeline.id,
            entry=record.stage,
            resumed=True,
        )
        commit = commit_from(
            record, "resume", now, state=state, last_seq=start.seq, events=(start,),
            **self._lease(),
        )  # fmt: skip
        try:
            version = store.commit(commit)
        except ConflictError as exc:
            if fast:
                current = store.load_run(record.run_id)
                if current.status == lifecycle.PAUSED:
                    raise _StaleCopy(record.run_id) from exc
            raise RunNotPaused(
                f"run {record.run_id!r} is no longer paused: another resume won the race"
            ) from exc
        claimed = record.applied(commit, version)
        if claimed.pipeline_version == self.pipeline.version:
            return claimed
        return replace(claimed, pipeline_version=self.pipeline.version)  # migrated

    def _migrated(self, record: RunRecord, migrate: Migration) -> dict[str, Any]:
        state = migrate(copy_state(record.state))
        if not isinstance(state, dict):
            raise StagelineError(f"migration for run {record.run_id!r} must return a dict")
        problem = find_unstorable(state)
        if problem is not None:
            raise StagelineError(
                f"migration for run {record.run_id!r} produced an unstorable value at "
                f"{problem[0]!r}: {describe(problem[1])}"
            )
        return state

    # --- by run id ----------------------------------------------------------------------

    def abort(self, run_id: str, reason: str | None = None) -> None:
        """Abort a run known only by its id.

        A run this factory's registry holds is aborted through its RunContext (promptly,
        as `RunContext.abort`). A paused run only the store holds is aborted there, in one
        compare-and-set (no actor starts). Otherwise RunNotFound, or RunStateError when
        the run has ended or another process drives it.
        """
        live = None if self.registry is None else self.registry._lookup(run_id)
        if live is not None:
            live.abort(reason)
            return
        store = self.store_for(run_id)
        record = store.load_run(run_id)
        if record.status == lifecycle.PAUSED:
            entry = record.stage or str(self.pipeline.first_stage.id)
            self._context(store, record, entry, Container(run_id), resumed=True).abort(reason)
            return
        if not lifecycle.can(record.status, "abort"):
            raise RunStateError(
                f"run {run_id!r} has already ended (status {record.status}); nothing to abort"
            )
        raise RunStateError(
            f"run {run_id!r} is {record.status} but not live in this process: abort it where "
            "it runs (if that process died, recover the run first)"
        )

    def bound_to(self, store: Store, registry: Any) -> PipelineFactory:
        """This factory (pipeline, initial state, logger, migrations) on `store` and `registry`.

        How the daemon adopts an application's factories: it serves one store and runs
        one registry, whatever the factories were built with.
        """
        other = PipelineFactory(
            self.pipeline,
            store=store,
            initial_state=self.initial_state,
            registry=registry,
            logger=self.logger,
            max_bundle_bytes=self.max_bundle_bytes,
        )
        other._migrations = dict(self._migrations)
        return other

    def _lease(self) -> dict[str, Any]:
        """The lease a run of this factory's registry takes (none without a registry)."""
        if self.registry is None:
            return {}
        lease: dict[str, Any] = self.registry._lease()
        return lease

    # --- wiring -----------------------------------------------------------------------

    def _context(
        self, store: Store, record: RunRecord, entry: str, container: Container, *, resumed: bool
    ) -> RunContext:
        return RunContext(
            lambda ctx: self._deps(ctx, store, container),
            record,
            entry,
            container=container,
            resumed=resumed,
            registry=self.registry,
        )

    def _deps(self, context: RunContext, store: Store, container: Container) -> RunDeps:
        return RunDeps(
            pipeline=self.pipeline,
            store=store,
            clock=self._runtime.clock,
            timers=self._runtime.timers,
            workers=self._runtime.workers,
            emitter=Emitter(EventLogger(self.logger)),
            logger=self.logger,
            container=container,
            on_commit=context._committed,
            on_end=context._ended,
            max_bundle_bytes=self.max_bundle_bytes,
            live_window=self.registry is not None,
        )
