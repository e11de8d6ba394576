"""Checks and row codecs shared by every store (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stageline.core.codec import DEFAULT_MAX_BYTES, decode, encode
from stageline.core.errors import (
    ConflictError,
    RunExistsError,
    RunNotFound,
    StateTooLarge,
    StoreError,
)
from stageline.core.lifecycle import ACTIVE
from stageline.core.mailbox import Request
from stageline.core.store import RunRecord


def run_exists(run_id: str) -> RunExistsError:
    return RunExistsError(
        f"run {run_id!r} already exists in this store; use a new run_id or resume it"
    )


def fitting(run_id: str, what: str, data: bytes, max_bytes: int) -> bytes:
    """`data` if it is within the store's `max_state_bytes`, else StateTooLarge: a store
    must never write what it would refuse to read back."""
    if len(data) > max_bytes:
        raise StateTooLarge(
            f"the {what} of run {run_id!r} is {len(data)} bytes, over this store's "
            f"max_state_bytes={max_bytes}; nothing was written. Keep large data out of the "
            "state (or raise max_state_bytes)"
        )
    return data


def run_not_found(run_id: str) -> RunNotFound:
    return RunNotFound(f"run {run_id!r} is not in this store; check the run_id and the store")


def conflict(run_id: str, expected: int, found: int | None) -> ConflictError:
    return ConflictError(
        f"commit to run {run_id!r} expected version {expected} but the store has {found}: "
        "another writer took the run; this process must stop driving it"
    )


def request_exists(request_id: str) -> StoreError:
    return StoreError(f"mailbox request {request_id!r} already exists; post with a new id")


def request_not_found(request_id: str) -> StoreError:
    return StoreError(
        f"mailbox request {request_id!r} is not in this store; check the id and the store"
    )


def claimable(record: RunRecord, owner: str, now: float) -> bool:
    """May `owner` take this run's lease at `now` (the `claim_run` condition)?"""
    if record.status not in ACTIVE:
        return False
    if record.owner is None or record.owner == owner:
        return True
    return record.lease_until is None or record.lease_until <= now


RUN_COLUMNS = (
    "run_id, pipeline_id, pipeline_version, status, stage, state, checkpoint, error, "
    "version, last_seq, stage_runs, created_at, updated_at, owner, lease_until"
)


def maybe_encode(value: Any) -> bytes | None:
    return None if value is None else encode(value)


def maybe_decode(data: bytes | None, what: str) -> Any:
    return None if data is None else decode(data, what=what)


def record_from_row(row: tuple[Any, ...], max_bytes: int = DEFAULT_MAX_BYTES) -> RunRecord:
    """A RunRecord from a row of the SQL stores' `runs` columns (RUN_COLUMNS), in order.

    `max_bytes` bounds the state's decoding (a store that writes bigger states reads them).
    """
    return RunRecord(
        run_id=row[0],
        pipeline_id=row[1],
        pipeline_version=row[2],
        status=row[3],
        stage=row[4],
        state=decode(row[5], max_bytes=max_bytes, what=f"state of run {row[0]!r}"),
        checkpoint=row[6],
        error=maybe_decode(row[7], f"error of run {row[0]!r}"),
        version=row[8],
        last_seq=row[9],
        stage_runs=row[10],
        created_at=row[11],
        updated_at=row[12],
        owner=row[13],
        lease_until=row[14],
    )


REQUEST_COLUMNS = (
    "request_id, kind, run_id, posted_at, pipeline_id, args, status, claimed_by, "
    "answered_at, answer"
)


def request_from_row(row: tuple[Any, ...]) -> Request:
    """A mailbox Request from a row of the SQL stores' REQUEST_COLUMNS, in their order."""
    return Request(
        request_id=row[0],
        kind=row[1],
        run_id=row[2],
        posted_at=row[3],
        pipeline_id=row[4],
        args=decode(row[5], what=f"arguments of request {row[0]!r}"),
        status=row[6],
        claimed_by=row[7],
        answered_at=row[8],
        answer=row[9],
    )


PRUNE_BATCH = 1000
"""Answered requests deleted per transaction: pruning a long backlog (a mailbox from
before pruning existed) never holds a store's write lock for long."""

PRUNE_SQL = (
    "DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} "
    "WHERE status IN ({mark}, {mark}) AND answered_at < {mark} LIMIT {mark})"
)


def in_batches(delete_batch: Callable[[int], int]) -> int:
    """Call `delete_batch(PRUNE_BATCH)`, each in its own transaction, until a call deletes
    fewer than a batch; return how many were deleted in all."""
    pruned = 0
    while True:
        deleted = delete_batch(PRUNE_BATCH)
        pruned += deleted
        if deleted < PRUNE_BATCH:
            return pruned
