"""Checkpoints and bundles: what a paused run leaves in the store so anyone can resume it.

A checkpoint is a small record in the run's row: where to resume, when and where it
paused, and (after the live window, or with `persist=True`) the run's artifacts as a
bundle. A bundle is cbor2 bytes with a versioned header; decoding it never builds
anything but state types.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .codec import DEFAULT_MAX_BYTES, decode, encode
from .errors import (
    BundleError,
    CheckpointCorrupt,
)
from .patch import show

BUNDLE_FORMAT: Final = "stageline.bundle"
BUNDLE_VERSION: Final = 1
CHECKPOINT_VERSION: Final = 1

Artifacts = dict[str, dict[str, Any]]
"""Artifact values by namespace (a pipeline path, or "" for run-wide keys), then by key."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a paused run resumes, and what it needs to do so in any process."""

    run_id: str
    pipeline_id: str
    pipeline_version: int
    resume_at: str
    paused_at_stage_id: str
    paused_at_stage_label: str
    paused_on: str
    children: dict[str, Any] = field(default_factory=dict)
    container_bundle: bytes | None = None
    expires_at: str | None = None
    """When `Pause.expires_in` runs out (ISO-8601 UTC), if the pause gave one."""
    on_expiry: str | None = None
    """The stage the run continues at when it expires (None: it ends "expired")."""

    def with_bundle(self, bundle: bytes | None) -> Checkpoint:
        return replace(self, container_bundle=bundle)

    @property
    def paused_on_datetime(self) -> _dt.datetime:
        return _dt.datetime.fromisoformat(self.paused_on)


def checkpoint_to_bytes(checkpoint: Checkpoint) -> bytes:
    record: dict[str, Any] = {
        "v": CHECKPOINT_VERSION,
        "run_id": checkpoint.run_id,
        "pipeline_id": checkpoint.pipeline_id,
        "pipeline_version": checkpoint.pipeline_version,
        "resume_at": checkpoint.resume_at,
        "paused_at_stage_id": checkpoint.paused_at_stage_id,
        "paused_at_stage_label": checkpoint.paused_at_stage_label,
        "paused_on": checkpoint.paused_on,
        "children": checkpoint.children,
    }
    if checkpoint.container_bundle is not None:
        record["container_bundle"] = checkpoint.container_bundle
    for name in _OPTIONAL_TEXT:
        if getattr(checkpoint, name) is not None:
            record[name] = getattr(checkpoint, name)
    return encode(record)


_TEXT_FIELDS: Final = (
    "run_id",
    "pipeline_id",
    "resume_at",
    "paused_at_stage_id",
    "paused_at_stage_label",
    "paused_on",
)


_OPTIONAL_TEXT: Final = ("expires_at", "on_expiry")


def checkpoint_from_bytes(data: bytes, run_id: str = "?") -> Checkpoint:
    """Decode and validate a stored checkpoint; raise CheckpointCorrupt for bad bytes."""
    try:
        record = decode(data, what=f"checkpoint of run {run_id!r}")
    except BundleError as exc:
        raise CheckpointCorrupt(f"{exc}; the run cannot be resumed from it") from exc
    if not isinstance(record, dict):
        raise CheckpointCorrupt(f"checkpoint of run {run_id!r} is not a record")
    if record.get("v") != CHECKPOINT_VERSION:
        raise CheckpointCorrupt(
            f"checkpoint of run {run_id!r} has version {show(record.get('v'))}; this stageline "
            f"reads version {CHECKPOINT_VERSION}"
        )
    bad = _damaged_fields(record)
    if bad:
        raise CheckpointCorrupt(
            f"checkpoint of run {run_id!r} is damaged: bad or missing {', '.join(bad)}"
        )
    return Checkpoint(
        run_id=record["run_id"],
        pipeline_id=record["pipeline_id"],
        pipeline_version=record["pipeline_version"],
        resume_at=record["resume_at"],
        paused_at_stage_id=record["paused_at_stage_id"],
        paused_at_stage_label=record["paused_at_stage_label"],
        paused_on=record["paused_on"],
        children=record.get("children", {}),
        container_bundle=record.get("container_bundle"),
        expires_at=record.get("expires_at"),
        on_expiry=record.get("on_expiry"),
    )


def _damaged_fields(record: dict[str, Any]) -> list[str]:
    """The names of a decoded checkpoint's fields that are missing or of the wrong type."""
    bad = [name for name in _TEXT_FIELDS if not isinstance(record.get(name), str)]
    version = record.get("pipeline_version")
    if not isinstance(version, int) or isinstance(version, bool):
        bad.append("pipeline_version")
    if not isinstance(record.get("container_bundle"), bytes | None):
        bad.append("container_bundle")
    if not isinstance(record.get("children", {}), dict):
        bad.append("children")
    bad.extend(n for n in _OPTIONAL_TEXT if not isinstance(record.get(n, ""), str))
    return bad


def encode_bundle(
    run_id: str, artifacts: Artifacts, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> bytes:
    """A bundle of a run's artifacts; refuse one over `max_bytes`."""
    data = encode(
        {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "run_id": run_id,
            "artifacts": artifacts,
        }
    )
    if len(data) > max_bytes:
        raise BundleError(
            f"the artifacts of run {run_id!r} make a {len(data)}-byte bundle, over "
            f"max_bundle_bytes={max_bytes}; store less in artifacts or raise the limit"
        )
    return data


def decode_bundle(data: bytes, run_id: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Artifacts:
    """The artifacts in a bundle; raise BundleError for anything but a valid bundle."""
    value = decode(data, max_bytes=max_bytes, what=f"bundle of run {run_id!r}")
    if not isinstance(value, dict) or value.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle of run {run_id!r} has no stageline bundle header")
    if value.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"bundle of run {run_id!r} has version {show(value.get('version'))}; "
            f"this stageline reads version {BUNDLE_VERSION}"
        )
    if value.get("run_id") != run_id:
        raise BundleError(
            f"bundle belongs to run {show(value.get('run_id'))}, not {run_id!r}; "
            "it was copied from another run"
        )
    artifacts = value.get("artifacts")
    if not isinstance(artifacts, dict) or not all(isinstance(v, dict) for v in artifacts.values()):
        raise BundleError(f"bundle of run {run_id!r} has no artifacts table")
    return artifacts
