"""Reading and writing a paused run's checkpoint through any Store (public helpers)."""

from __future__ import annotations

from stageline.core.checkpoint import Checkpoint, checkpoint_from_bytes, checkpoint_to_bytes
from stageline.core.errors import (
    CheckpointCorrupt,
    CheckpointMismatch,
    CheckpointNotFound,
    RunNotFound,
    RunNotPaused,
)
from stageline.core.store import RunRecord, Store


def write_checkpoint(
    store: Store, checkpoint: Checkpoint, *, expected_version: int | None = None
) -> None:
    """Replace a paused run's checkpoint (e.g. to add its bundle); raise if not paused.

    With `expected_version`, write only if the run is still at that version: a stale
    copy (the run was resumed and paused again elsewhere) never overwrites a newer one.
    """
    written = store.set_checkpoint(
        checkpoint.run_id, checkpoint_to_bytes(checkpoint), expected_version=expected_version
    )
    if not written:
        raise RunNotPaused(
            f"run {checkpoint.run_id!r} is not paused (at this version); its checkpoint "
            "was not written"
        )


def read_checkpoint(store: Store, pipeline_id: str, run_id: str) -> Checkpoint:
    """The checkpoint of a run of `pipeline_id`; CheckpointNotFound/Mismatch/Corrupt."""
    try:
        record = store.load_run(run_id)
    except RunNotFound as exc:
        raise CheckpointNotFound(f"no run {run_id!r} in the store, so no checkpoint") from exc
    return checkpoint_of(record, pipeline_id)


def clear_checkpoint(store: Store, pipeline_id: str, run_id: str) -> None:
    """Remove a run's checkpoint, whatever its status."""
    record = store.load_run(run_id)
    if record.pipeline_id != pipeline_id:
        raise CheckpointMismatch(
            f"run {run_id!r} belongs to pipeline {record.pipeline_id!r}, not {pipeline_id!r}"
        )
    store.set_checkpoint(run_id, None, only_if_paused=False)


def checkpoint_of(record: RunRecord, pipeline_id: str) -> Checkpoint:
    """The checkpoint in an already loaded run record (see `read_checkpoint`)."""
    run_id = record.run_id
    if record.pipeline_id != pipeline_id:
        raise CheckpointMismatch(
            f"run {run_id!r} belongs to pipeline {record.pipeline_id!r}, not {pipeline_id!r}; "
            "resume it with that pipeline's factory"
        )
    if record.checkpoint is None:
        raise CheckpointNotFound(
            f"run {run_id!r} has no checkpoint (status {record.status!r}); only a paused "
            "run has one"
        )
    checkpoint = checkpoint_from_bytes(record.checkpoint, run_id)
    if checkpoint.run_id != run_id or checkpoint.pipeline_id != pipeline_id:
        raise CheckpointCorrupt(
            f"checkpoint stored for run {run_id!r} names run {checkpoint.run_id!r} of "
            f"pipeline {checkpoint.pipeline_id!r}"
        )
    return checkpoint
