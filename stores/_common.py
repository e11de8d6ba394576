"""Checks and row codecs shared by every store (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from stageline.core import lifecycle
from stageline.core.codec import encode
from stageline.core.errors import (
    CommitRefused,
    ConflictError,
    RunExistsError,
    RunNotFound,
    StateTooLarge,
    StoreError,
)
from stageline.core.mailbox import Request
from stageline.core.store import RunRecord, Waking


def run_exists(run_id: str) -> RunExistsError:
    return RunExistsError(
        f"run {run_id!r} already exists in this store; use a new run_id, resume it, or "
        "prepare it with if_exists='attach' to wait for the run already there"
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
    if record.status not in lifecycle.ACTIVE:
        return False
    if record.owner is None or record.owner == owner:
        return True
    return record.lease_until is None or record.lease_until <= now


RUN_COLUMNS = (
    "run_id, pipeline_id, pipeline_version, status, stage, state, checkpoint, error, "
    "version, last_seq, stage_runs, created_at, updated_at, owner, lease_until, wake_at, trace, "
    "priority"
)


WAKING_WHERE = (
    f"wake_at IS NOT NULL AND status IN {lifecycle.sql_list(lifecycle.WAITING)} "
    "AND ({mark} IS NULL OR pipeline_id = {mark}) AND ({mark} IS NULL OR wake_at <= {mark}) "
    "ORDER BY wake_at LIMIT {mark}"
)
"""`list_waking`'s condition, order and limit (`{mark}`: the driver's parameter mark)."""


def waking_from_rows(rows: Sequence[Sequence[Any]]) -> list[Waking]:
    """`list_waking`'s answer from rows of (run_id, pipeline_id, status, wake_at); a row
    with a damaged type is left out (recovery reports the run when it loads it)."""
    return [
        Waking(row[0], row[1], row[2], float(row[3]))
        for row in rows
        if isinstance(row[0], str) and isinstance(row[3], int | float)
    ]


def run_values(record: RunRecord, state: bytes) -> tuple[Any, ...]:
    """The values of a new run's row, in RUN_COLUMNS order (`state`: its encoded state)."""
    return (
        record.run_id, record.pipeline_id, record.pipeline_version, record.status,
        record.stage, state, record.checkpoint, maybe_encode(record.error), record.version,
        record.last_seq, record.stage_runs, record.created_at, record.updated_at,
        record.owner, record.lease_until, record.wake_at, record.trace, record.priority,
    )  # fmt: skip


def usage_from_rows(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """`limit_usage`'s answer from rows of (limit, key, running, queued): those with a
    run holding or waiting, by limit then key (code point order, as MemoryStore's)."""
    return [
        {"limit": limit, "key": key, "running": int(running), "queued": int(queued)}
        for limit, key, running, queued in sorted(rows, key=lambda row: (row[0], row[1]))
        if running or queued
    ]


def maybe_encode(value: Any) -> bytes | None:
    return None if value is None else encode(value)


def finished_statuses(statuses: Collection[str], limit: int) -> tuple[str, ...]:
    """The statuses `delete_finished` may delete, checked: ValueError for any other
    status (retention never deletes a run that may go on) or a limit below 1."""
    others = sorted(set(statuses) - lifecycle.FINISHED)
    if others:
        raise ValueError(
            "delete_finished deletes only finished runs "
            f"({', '.join(sorted(lifecycle.FINISHED))}), not {', '.join(others)}"
        )
    if limit < 1:
        raise ValueError(f"delete_finished needs a limit of at least 1, got {limit}")
    return tuple(sorted(set(statuses)))


def args_fitting(request: Request, data: bytes, max_bytes: int) -> bytes:
    """A request's encoded arguments if the store can read them back, else StoreError
    (nothing is posted): the mailbox never holds a request no daemon could read."""
    if len(data) > max_bytes:
        raise StoreError(
            f"the arguments of mailbox request {request.request_id!r} are {len(data)} bytes "
            f"encoded, over this store's limit of {max_bytes} bytes (max_state_bytes); nothing "
            "was posted. Send less (keep large data out of the state)"
        )
    return data


def no_store(where: str, check: str = "the path") -> StoreError:
    """The error of opening, without creating, a store that is not there."""
    return StoreError(
        f"no stageline store at {where}; start `stageline serve` on it first or check {check}"
    )


def commit_refused(what: str, where: str, reason: str) -> CommitRefused:
    return CommitRefused(
        f"{what} was refused by {where}: {reason}. The store will refuse it again (a value "
        "it cannot hold or a constraint it enforces); nothing was written"
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
