"""Checks shared by every store (pure; no I/O)."""

from __future__ import annotations

from stageline.core.errors import ConflictError, RunExistsError, RunNotFound
from stageline.core.lifecycle import PENDING, RUNNING
from stageline.core.store import RunRecord


def run_exists(run_id: str) -> RunExistsError:
    return RunExistsError(
        f"run {run_id!r} already exists in this store; use a new run_id or resume it"
    )


def run_not_found(run_id: str) -> RunNotFound:
    return RunNotFound(f"run {run_id!r} is not in this store; check the run_id and the store")


def conflict(run_id: str, expected: int, found: int | None) -> ConflictError:
    return ConflictError(
        f"commit to run {run_id!r} expected version {expected} but the store has {found}: "
        "another writer took the run; this process must stop driving it"
    )


def claimable(record: RunRecord, owner: str, now: float) -> bool:
    """May `owner` take this run's lease at `now` (the `claim_run` condition)?"""
    if record.status not in (RUNNING, PENDING):
        return False
    if record.owner is None or record.owner == owner:
        return True
    return record.lease_until is None or record.lease_until <= now
