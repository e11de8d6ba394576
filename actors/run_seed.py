"""Checks of what a factory is given for a run: entry, run id, initial state, resume.

Pure checks and conversions (no actors): each raises a StagelineError naming what was
wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stageline.core import lifecycle
from stageline.core.checkpoint import Checkpoint, decode_bundle
from stageline.core.children import check_positions, positions
from stageline.core.definition import Pipeline
from stageline.core.errors import (
    BundleError,
    CheckpointCorrupt,
    CheckpointMismatch,
    CheckpointNotFound,
    RoutingError,
    RunExpired,
    RunNotFound,
    RunNotPaused,
    StagelineError,
)
from stageline.core.patch import PIPELINE_DATA_KEY, copy_state, describe, find_unstorable
from stageline.core.store import RunRecord, Store
from stageline.core.text import is_utf8

InitialState = Callable[[], Mapping[str, Any]] | Mapping[str, Any] | None
Migration = Callable[[dict[str, Any]], dict[str, Any]]


def entry_of(pipeline: Pipeline, entry: str | None) -> str:
    """The stage a new run starts at (default: the first)."""
    if entry is None:
        return str(pipeline.first_stage.id)
    if not pipeline.has_stage(entry):
        raise RoutingError(
            f"entry {entry!r} is not a stage of pipeline {pipeline.id!r}; "
            f"known stages: {', '.join(pipeline.stage_ids)}"
        )
    return entry


def new_run_id(run_id: str | None) -> str:
    """The given run id, checked, or a new UUIDv7."""
    if run_id is None:
        import uuid6  # deferred: it costs a cold start ~20 ms

        return str(uuid6.uuid7())
    if not isinstance(run_id, str) or not run_id or "\x00" in run_id or not is_utf8(run_id):
        raise StagelineError(
            f"run_id must be a non-empty string of valid UTF-8 without NUL, got {run_id!r}"
        )
    return run_id


def initial_state(source: InitialState) -> dict[str, Any]:
    """A private copy of a factory's initial state (a mapping or a callable making one)."""
    value = source() if callable(source) else source
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StagelineError(
            f"initial_state must be a dict (or return one), got {type(value).__name__}"
        )
    state: dict[str, Any] = copy_state(dict(value))
    if PIPELINE_DATA_KEY in state:
        raise StagelineError(f"initial_state may not use the reserved key {PIPELINE_DATA_KEY!r}")
    problem = find_unstorable(state)
    if problem is not None:
        raise StagelineError(
            f"initial_state cannot be stored at {problem[0]!r}: {describe(problem[1])}"
        )
    return state


def paused_record(store: Store, run_id: str, pipeline: Pipeline) -> RunRecord:
    """The stored run to resume (paused, or sleeping: woken early); CheckpointNotFound or
    CheckpointMismatch, RunExpired, RunNotPaused."""
    try:
        record = store.load_run(run_id)
    except RunNotFound as exc:
        raise CheckpointNotFound(
            f"no run {run_id!r} in the store, so no checkpoint to resume from"
        ) from exc
    if record.pipeline_id != pipeline.id:
        raise CheckpointMismatch(
            f"run {run_id!r} belongs to pipeline {record.pipeline_id!r}, not "
            f"{pipeline.id!r}; resume it with that pipeline's factory"
        )
    if record.status == lifecycle.EXPIRED:
        raise RunExpired(
            f"run {run_id!r} stayed paused past the registry's checkpoint_ttl and expired; "
            "it cannot be resumed (its committed state is still readable)"
        )
    if record.status not in lifecycle.WAITING:
        raise RunNotPaused(
            f"run {run_id!r} is {record.status!r}, not paused; only a paused run resumes "
            "(or a sleeping one, woken early)"
        )
    return record


def check_resume_at(checkpoint: Checkpoint, pipeline: Pipeline, entry: str | None = None) -> None:
    """CheckpointMismatch unless `pipeline` has the stage the run goes on at (`entry`,
    default: the checkpoint's `resume_at`)."""
    entry = checkpoint.resume_at if entry is None else entry
    if not pipeline.has_stage(entry):
        raise CheckpointMismatch(
            f"run {checkpoint.run_id!r} goes on at stage {entry!r}, which "
            f"pipeline {pipeline.id!r} v{pipeline.version} does not have; known stages: "
            f"{', '.join(pipeline.stage_ids)}"
        )


def waking_state(
    record: RunRecord,
    checkpoint: Checkpoint,
    entry: str,
    pipeline: Pipeline,
    migrations: Mapping[int, Migration],
) -> dict[str, Any] | None:
    """The state a run the registry wakes (or expires on to `entry`) goes on with: migrated
    if it waited under another pipeline version, else None (as stored). The same checks
    as a resume: CheckpointMismatch if `pipeline` cannot continue it."""
    migrate = migration_for(checkpoint, pipeline, migrations)
    check_resume_at(checkpoint, pipeline, entry)
    check_positions(pipeline, positions(record.state), record.run_id)
    return None if migrate is None else migrated(record, migrate)


def migration_for(
    checkpoint: Checkpoint, pipeline: Pipeline, migrations: Mapping[int, Migration]
) -> Migration | None:
    """The migration a run paused under another pipeline version needs (None: same)."""
    if checkpoint.pipeline_version == pipeline.version:
        return None
    migrate = migrations.get(checkpoint.pipeline_version)
    if migrate is None:
        raise CheckpointMismatch(
            f"run {checkpoint.run_id!r} paused under {pipeline.id!r} version "
            f"{checkpoint.pipeline_version}, this factory has version "
            f"{pipeline.version}; register factory.add_migration("
            f"{checkpoint.pipeline_version}, migrate) to resume it"
        )
    return migrate


def migrated(record: RunRecord, migrate: Migration) -> dict[str, Any]:
    """The run's state after `migrate`, checked to be storable."""
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


def bundle_artifacts(checkpoint: Checkpoint, max_bytes: int) -> dict[str, dict[str, Any]]:
    """The artifacts in a checkpoint's bundle (none without one)."""
    if checkpoint.container_bundle is None:
        return {}
    try:
        artifacts: dict[str, dict[str, Any]] = decode_bundle(
            checkpoint.container_bundle, checkpoint.run_id, max_bytes=max_bytes
        )
    except BundleError as exc:
        raise CheckpointCorrupt(f"the bundle in the checkpoint is unusable: {exc}") from exc
    return artifacts
