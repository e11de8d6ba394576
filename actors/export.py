"""Exporting a paused run's artifacts into its checkpoint: the one place it happens.

A paused run's artifacts (its Container) live in memory while a registry holds the run
for its pause window. They reach the store in exactly one of two ways, both here: with
the pause commit itself (`pause_bundle`: `Pause(persist=True)`, or no registry to hold
the run), or when the window closes (`export_paused`, called by the registry through the
run's handle, or by `registry.stop()`).
"""

from __future__ import annotations

from stageline.core.checkpoint import checkpoint_from_bytes
from stageline.core.definition import Pause, Stage
from stageline.core.errors import BundleError, RunNotPaused, StageError
from stageline.core.store import RunRecord, Store
from stageline.stores.checkpoints import write_checkpoint

from .container import Container
from .deps import RunDeps


def pause_bundle(deps: RunDeps, stage: Stage, answer: Pause) -> bytes | None:
    """The bundle a pause commit carries, or None when the registry exports it later.

    Without a registry nobody would export the artifacts later: they go with the pause.
    A bundle that cannot be made fails the stage (StageError, kind "bundle").
    """
    if deps.live_window and not answer.persist and answer.expires_in is None:
        return None  # the registry holds them live, then exports them
    return run_bundle(deps, stage, "paused")


def run_bundle(deps: RunDeps, stage: Stage, what: str) -> bytes:
    """The run's artifacts as a bundle, for a commit after which no actor holds them (a
    pause without a live window, a sleep); StageError (kind "bundle") if they cannot be."""
    try:
        return deps.container.export_bundle(deps.max_bundle_bytes)
    except BundleError as exc:
        raise StageError(
            f"stage {stage.label}:{stage.id} {what} but its run's artifacts cannot be "
            f"bundled: {exc}",
            stage_id=stage.id,
            kind="bundle",
        ) from exc


def export_paused(store: Store, record: RunRecord, container: Container, max_bytes: int) -> None:
    """Write a paused run's artifacts into its stored checkpoint (its window closed).

    Written only if the run is still at `record.version`: a run resumed elsewhere since
    (and maybe paused again) keeps its newer checkpoint, and this copy is stale.
    BundleError if the artifacts cannot be bundled; StoreError if the store refuses.
    """
    assert record.checkpoint is not None
    checkpoint = checkpoint_from_bytes(record.checkpoint, record.run_id)
    bundle = container.export_bundle(max_bytes)
    try:
        write_checkpoint(store, checkpoint.with_bundle(bundle), expected_version=record.version)
    except RunNotPaused:
        pass  # resumed elsewhere since (maybe paused again): this copy is stale
