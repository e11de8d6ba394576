"""PipelineFactory: prepares and resumes runs of one pipeline; it holds no run state."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from stageline.core import children as kids
from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.checkpoint import Checkpoint
from stageline.core.clock import Clock, SystemClock
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.definition import Pipeline
from stageline.core.errors import (
    ConflictError,
    RunExistsError,
    RunNotPaused,
    RunStateError,
    StagelineError,
)
from stageline.core.patch import check_patch, merge
from stageline.core.store import RunRecord, Store
from stageline.stores.checkpoints import checkpoint_of

from . import run_seed as seed
from . import telemetry
from .admission import claims_for, take_slot
from .attached import attach
from .container import Container
from .context import RunContext
from .deps import RunDeps
from .emitter import Emitter
from .handle import RunHandle
from .live_run import LiveRun, NotSettled
from .logs import EventLogger, adapt_logger
from .run_seed import InitialState, Migration
from .runtime import Runtime, runtime_for
from .supervisor import Supervisor

RAISE = "raise"
ATTACH = "attach"
IF_EXISTS = (RAISE, ATTACH)
"""The words `prepare(if_exists=...)` takes."""


def _orphaned_in_queue(record: RunRecord, now: float) -> bool:
    """A queued run no live registry holds (its lease ran out): nobody would see a flag."""
    if record.status != lifecycle.QUEUED:
        return False
    return record.owner is None or record.lease_until is None or record.lease_until <= now


def _check_prepare(if_exists: str, priority: int) -> None:
    if if_exists not in IF_EXISTS:
        raise StagelineError(
            f"if_exists must be one of {', '.join(map(repr, IF_EXISTS))}, got {if_exists!r}"
        )
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) >= 2**63:
        raise StagelineError(
            f"priority must be an integer between -(2**63 - 1) and 2**63 - 1, got {priority!r}"
        )


class _StaleCopy(Exception):
    """A live paused copy is older than the store's run (resumed and paused elsewhere)."""


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
        self.logger = adapt_logger(logger)
        self.max_bundle_bytes = getattr(registry, "max_bundle_bytes", max_bundle_bytes)
        self._migrations: dict[int, Migration] = {}
        self._supervisor: Supervisor | None = getattr(registry, "supervisor", None)
        supervised = self._supervisor
        self._runtime: Runtime = (
            supervised.runtime if supervised else runtime_for(clock or SystemClock())
        )
        if supervised is not None:
            supervised.register(self)  # so that registry.retry(run_id) finds the pipeline

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
        if_exists: str = RAISE,
        priority: int = 0,
    ) -> RunContext:
        """A new run starting at stage `entry` (default: the first); nothing runs yet.

        `state`, if given, is a patch merged over the factory's initial state (how
        `stageline start --state JSON` seeds a run). A `run_id` already in the store
        raises RunExistsError with `if_exists="raise"` (the default); with
        `if_exists="attach"` it returns a RunContext attached to that run instead (its
        `entry` and `state` are ignored; RunExistsError if it is another pipeline's run).
        An attached context starts nothing: `wait()` returns the run's RunResult once it
        stops. When this factory's registry drives the run (started in this process),
        that run's own RunContext comes back. Without a `run_id` there is nothing to
        attach to: a new run is prepared. Of racing attaching prepares (threads or
        processes) exactly one creates the run; the others attach to it. `priority`: of
        runs queued for the pipeline's limits, higher ones are admitted first (SPEC 20).
        """
        _check_prepare(if_exists, priority)
        entry = seed.entry_of(self.pipeline, entry)
        run_id = seed.new_run_id(run_id)
        attached = self._attached(run_id) if if_exists == ATTACH else None
        if attached is not None:
            return attached
        try:
            return self._prepare_new(entry, run_id, state, priority)
        except RunExistsError:
            # Lost the race to create it (another thread or process): one run, watched.
            attached = self._attached(run_id) if if_exists == ATTACH else None
            if attached is None:
                raise
            return attached

    def _prepare_new(
        self, entry: str, run_id: str, state: Mapping[str, Any] | None, priority: int
    ) -> RunContext:
        """Create the run in the store (RunExistsError if its id is taken) and hold it."""
        initial = seed.initial_state(self.initial_state)
        patch = check_patch(state, f"initial state patch for run {run_id!r}")
        initial = merge(initial, patch) if patch else initial
        claims_for(self.pipeline, initial, run_id)  # a failing key function: refused now
        now = self.clock.wall()
        lease = self._lease()
        record = RunRecord(
            run_id=run_id,
            pipeline_id=self.pipeline.id,
            pipeline_version=self.pipeline.version,
            status=lifecycle.PENDING,
            state=initial,
            priority=priority,
            stage=entry,
            created_at=now,
            updated_at=now,
            owner=None if lease is None else lease.owner,
            lease_until=None if lease is None else lease.until,
        )
        store = self.store_for(run_id)
        store.create_run(record)
        return self._held(self.live_run(store, record, entry, Container(run_id)))

    def _attached(self, run_id: str) -> RunContext | None:
        """A context on the stored run `run_id` (actors/attached.py); None if absent."""
        store = self.store_for(run_id)
        return attach(store, run_id, self.pipeline.id, self._supervisor, self.abort)

    # --- resuming ---------------------------------------------------------------------

    def resume(self, run_id: str, patch: Mapping[str, Any] | None = None) -> RunContext:
        """Continue a paused run at its `resume_at`, committing `patch` with the claim.

        Fast path: while the registry still holds the run, the same RunContext comes back
        (no store read, no decoding). Slow path: the checkpoint is read, validated and the
        run rebuilt from committed state and its bundle. Of two racing resumes exactly one
        wins; the other raises RunNotPaused.
        """
        checked = check_patch(patch, f"resume patch for run {run_id!r}")
        fast = self._resume_live(run_id, checked)
        return fast if fast is not None else self._resume_from_store(run_id, checked)

    def _resume_live(self, run_id: str, patch: Mapping[str, Any] | None) -> RunContext | None:
        """The fast path: the live run, claimed; None when the store must decide."""
        supervisor = self._supervisor
        live = None if supervisor is None else supervisor.lookup(run_id)
        if live is None or supervisor is None:
            return None
        if live.pipeline is not self.pipeline and live.pipeline != self.pipeline:
            supervisor.forget(live)  # another definition or version: use the store
            return None
        store = live.store
        try:
            live.claim_resume(lambda record: self._claim(store, record, patch, None, fast=True))
        except (_StaleCopy, NotSettled):
            # Another process resumed it since (it may be paused again, later on): this
            # process's copy is out of date; the store decides.
            supervisor.forget(live)
            return None
        supervisor.resumed_fast()
        context: RunContext = live.context
        return context

    def _resume_from_store(self, run_id: str, patch: Mapping[str, Any] | None) -> RunContext:
        store = self.store_for(run_id)
        record = seed.paused_record(store, run_id, self.pipeline)
        checkpoint = checkpoint_of(record, self.pipeline.id)  # from this read: no second one
        migrate = seed.migration_for(checkpoint, self.pipeline, self._migrations)
        seed.check_resume_at(checkpoint, self.pipeline)
        kids.check_positions(self.pipeline, kids.positions(record.state), run_id)
        container = Container(run_id, seed.bundle_artifacts(checkpoint, self.max_bundle_bytes))
        claimed = self._claim(store, record, patch, migrate)
        live = self.live_run(store, claimed, checkpoint.resume_at, container, resumed=True)
        return self._held(live)

    def _held(self, live: LiveRun) -> RunContext:
        """Its context, once the registry holds the run (and renews its lease) from now
        on, before `run()`: so it can be aborted by id, and no other process recovers it."""
        live.hold()
        context: RunContext = live.context
        return context

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
        state = None if migrate is None else seed.migrated(record, migrate)
        now = self.clock.wall()
        lease = self._lease()
        if record.status == lifecycle.SLEEPING:  # woken early
            commit = tr.wake(record, now, lease, patch=patch, state=state)
        else:
            commit = tr.resume(record, now, patch=patch, state=state, lease=lease)
        try:  # through the pipeline's limits: "queued" if they have no slot for it now
            claimed, _ = take_slot(store, self.pipeline, record, commit, lease, now)
        except ConflictError as exc:
            if fast and store.load_run(record.run_id).status == lifecycle.PAUSED:
                raise _StaleCopy(record.run_id) from exc
            raise RunNotPaused(
                f"run {record.run_id!r} is no longer {record.status}: another resume, or its "
                "registry (a wake-up, a deadline), moved it on first"
            ) from exc
        if claimed.pipeline_version == self.pipeline.version:
            return claimed
        return replace(claimed, pipeline_version=self.pipeline.version)  # migrated

    # --- by run id ----------------------------------------------------------------------

    def abort(self, run_id: str, reason: str | None = None) -> None:
        """Abort a run known only by its id.

        A run this factory's registry holds is aborted through its RunContext (promptly,
        as `RunContext.abort`). A paused or sleeping run only the store holds (or a queued
        one whose registry's lease ran out) is aborted there, in one compare-and-set (no
        actor starts). A pending, queued or running run another process drives gets the
        store's durable abort flag: its owner aborts it at its next lease renewal (a
        recovery aborts it instead of resuming it), so this returns before the run has
        ended; watch its status. RunNotFound if absent, RunStateError if it has ended.
        """
        live = None if self._supervisor is None else self._supervisor.lookup(run_id)
        if live is not None:  # no store read: a live run is aborted even if the store is down
            live.context.abort(reason)
            return
        store = self.store_for(run_id)
        record = store.load_run(run_id)
        live = self._arriving(run_id, record)
        if live is not None:
            live.context.abort(reason)
            return
        if record.status in lifecycle.WAITING or _orphaned_in_queue(record, self.clock.wall()):
            entry = record.stage or str(self.pipeline.first_stage.id)
            paused = self.live_run(store, record, entry, Container(run_id), resumed=True)
            paused.context.abort(reason)
            return
        if record.status not in lifecycle.ACTIVE:
            raise RunStateError(
                f"run {run_id!r} has ended or cannot be aborted (status {record.status}); "
                "nothing to abort"
            )
        if not store.request_abort(run_id, reason):  # it moved on meanwhile: look again
            self.abort(run_id, reason)

    def _arriving(self, run_id: str, record: RunRecord) -> RunHandle | None:
        """A run not held yet by this factory's registry but about to be: prepared here a
        moment ago (it has our lease), its notice still on the way to the registry."""
        supervisor = self._supervisor
        if supervisor is None or record.owner != supervisor.config.owner:
            return None
        supervisor.settle()
        return supervisor.lookup(run_id)

    def waking_state(
        self, record: RunRecord, checkpoint: Checkpoint, entry: str
    ) -> dict[str, Any] | None:
        """Internal: what a run its registry wakes (or expires on to `entry`) goes on
        with, checked and migrated as a resume would be (None: its state as stored)."""
        return seed.waking_state(record, checkpoint, entry, self.pipeline, self._migrations)

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
        for version, migrate in self._migrations.items():
            other.add_migration(version, migrate)
        return other

    def _lease(self) -> tr.Lease | None:
        """The lease a run of this factory's registry takes (none without a registry)."""
        return None if self._supervisor is None else self._supervisor.lease()

    # --- wiring -----------------------------------------------------------------------

    def live_run(
        self, store: Store, record: RunRecord, entry: str, container: Container, *,
        resumed: bool = False,
    ) -> LiveRun:  # fmt: skip
        """Internal: the live run of `record` in this process (used by the registry)."""
        return LiveRun(
            lambda live: self._deps(live, store, container),
            record,
            entry,
            container=container,
            resumed=resumed,
            supervisor=self._supervisor,
        )

    def _deps(self, live: LiveRun, store: Store, container: Container) -> RunDeps:
        emitter = Emitter(EventLogger(self.logger))
        for tap in () if self._supervisor is None else self._supervisor.event_taps:
            emitter.on("*", tap)
        return RunDeps(
            pipeline=self.pipeline,
            store=store,
            clock=self._runtime.clock,
            timers=self._runtime.timers,
            workers=self._runtime.workers,
            emitter=emitter,
            logger=self.logger,
            container=container,
            on_commit=live.committed,
            on_end=telemetry.watch(live, emitter, store) or live.ended,
            max_bundle_bytes=self.max_bundle_bytes,
            live_window=self._supervisor is not None,
        )
