"""The statements of a SqliteStore, and the multi-statement steps it runs in one transaction.

Every function here takes the store's connection inside a transaction the store opened
(`BEGIN IMMEDIATE`), so what it does lands all together or not at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final

from stageline.core import lifecycle
from stageline.core.codec import encode_trusted
from stageline.core.events import is_journaled, journal_record
from stageline.core.mailbox import CLAIMED, FAILED, PENDING, Request
from stageline.core.store import Commit
from stageline.core.text import is_utf8

from ._common import PRUNE_SQL, conflict, maybe_encode
from ._rows import REQUEST_COLUMNS, claimed_requests

# A commit keeps the abort flag only while the run stays pending or running: the commit
# that ends (or pauses) the run clears it in the same statement.
_SET: Final = (
    "stage = ?, state = ?, checkpoint = ?, error = ?, version = version + 1, last_seq = ?, "
    "stage_runs = ?, updated_at = ?, wake_at = ?, "
    "abort_requested = CASE WHEN ? THEN abort_requested END, "
    "abort_reason = CASE WHEN ? THEN abort_reason END WHERE run_id = ? AND version = ?"
)
_UPDATE_SAME_STATUS: Final = f"UPDATE runs SET {_SET} AND status = ?"
_UPDATE_NEW_STATUS: Final = f"UPDATE runs SET status = ?, {_SET}"
_UPDATE_WITH_LEASE: Final = f"UPDATE runs SET status = ?, owner = ?, lease_until = ?, {_SET}"
PRUNE: Final = PRUNE_SQL.format(table="requests", mark="?")
SET_CHECKPOINT: Final = (
    "UPDATE runs SET checkpoint = ? WHERE run_id = ? "
    f"AND (? = 0 OR status = '{lifecycle.PAUSED}') AND (? IS NULL OR version = ?)"
)
SET_TRACE: Final = "UPDATE runs SET trace = ? WHERE run_id = ?"
CLAIM_RUN: Final = (
    "UPDATE runs SET owner = ?1, lease_until = ?2 WHERE run_id = ?3 "
    f"AND status IN {lifecycle.sql_list(lifecycle.ACTIVE)} "
    "AND (owner IS NULL OR owner = ?1 OR lease_until IS NULL OR lease_until <= ?4)"
)
_CLAIM_REQUESTS: Final = (
    "UPDATE requests SET status = ?, claimed_by = ? WHERE seq IN "
    "(SELECT seq FROM requests WHERE status = ? ORDER BY seq LIMIT ?) "
    f"AND status = ? RETURNING seq, {REQUEST_COLUMNS}"
)
_ANSWER_BY_SEQ: Final = "UPDATE requests SET status = ?, answer = ?, answered_at = ? WHERE seq = ?"
_REQUEST_ABORT: Final = (
    "UPDATE runs SET abort_requested = 1, abort_reason = ? WHERE run_id = ? "
    f"AND status IN {lifecycle.sql_list(lifecycle.ACTIVE)}"
)
_ABORT_REQUESTS: Final = (
    "SELECT run_id, abort_reason FROM runs WHERE abort_requested = 1 AND run_id IN ({marks})"
)
# The VALUES rows' columns are column1..column13, `same_status_row` (the parameters of
# _UPDATE_SAME_STATUS, in order; column10 repeats column9). A leading WITH naming them
# would hide the statement's rowcount from Python's sqlite3.
_UPDATE_SAME_STATUS_MANY: Final = (
    "UPDATE runs SET stage = v.column1, state = v.column2, checkpoint = v.column3, "
    "error = v.column4, version = runs.version + 1, last_seq = v.column5, "
    "stage_runs = v.column6, updated_at = v.column7, wake_at = v.column8, "
    "abort_requested = CASE WHEN v.column9 THEN runs.abort_requested END, "
    "abort_reason = CASE WHEN v.column9 THEN runs.abort_reason END "
    "FROM (VALUES {marks}) AS v WHERE runs.run_id = v.column11 "
    "AND runs.version = v.column12 AND runs.status = v.column13"
)
_SAME_STATUS_MARKS: Final = "(" + ", ".join(["?"] * 13) + ")"
_ROWS_PER_UPDATE: Final = 256  # 13 values a row: under SQLite's 32,766 parameters
_ROWS_PER_INSERT: Final = 512  # 4 values a row: far under SQLite's 32,766 parameters
_PIPELINE_EVENT: Final = "pipeline:"
_IDS_PER_QUERY: Final = 5000  # well under SQLite's limit of 32766 parameters
_FINISHED: Final = "SELECT run_id FROM runs WHERE status IN ({marks}) AND updated_at < ? LIMIT ?"


JournalRow = tuple[str, int, str, bytes]
"""A journal row: run id, seq, event name, encoded record."""
Encoded = tuple[bytes, list[JournalRow]]
"""A commit's encoded state and journal rows (run id, seq, name, record)."""


def encoded(commit: Commit, fits: Callable[[str, str, bytes], bytes]) -> Encoded:
    """The commit's state and journaled events encoded, each checked by `fits(run_id,
    what, data)` (the store's size bound), before any transaction opens."""
    state = fits(commit.run_id, "state", encode_trusted(commit.state))
    events = [
        (
            commit.run_id,
            e.seq,
            e.name,
            fits(commit.run_id, e.name, encode_trusted(journal_record(e))),
        )
        for e in commit.events
        if is_journaled(e.name)
    ]
    return state, events


_HOLDING: Final = frozenset({lifecycle.RUNNING, lifecycle.QUEUED})


def apply_commit(db: sqlite3.Connection, commit: Commit, data: Encoded) -> int:
    """Apply `commit` (its `encoded` data) in the open transaction: the run's row with
    compare-and-set on version, and its journal; ConflictError on a mismatch. The run's
    new version."""
    state, events = data
    version = update_commit(db, commit, state, journals=bool(events))
    insert_events(db, events)
    return version


def update_commit(db: sqlite3.Connection, commit: Commit, state: bytes, *, journals: bool) -> int:
    """The run's row of `commit` (compare-and-set on version; ConflictError, nothing
    written, on a mismatch), and its admission claims if it journals its end, pause or
    sleep. The run's new version; its journal rows are the caller's to insert."""
    if update_run(db, commit, state) != 1:
        found = db.execute("SELECT version FROM runs WHERE run_id = ?", (commit.run_id,))
        row = found.fetchone()
        raise conflict(commit.run_id, commit.expected_version, row and row[0])
    if journals and commit.status not in _HOLDING:  # no slot held any more
        db.execute("DELETE FROM claims WHERE run_id = ?", (commit.run_id,))
    return int(commit.expected_version) + 1


def insert_events(db: sqlite3.Connection, rows: Sequence[JournalRow]) -> None:
    """Journal rows, in a few multi-row INSERTs (`_chunks`), not one statement a row:
    each statement releases the GIL, and under load getting it back is a wait."""
    for chunk in _chunks(rows, _ROWS_PER_INSERT):
        marks = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
        db.execute(f"INSERT INTO events VALUES {marks}", [v for row in chunk for v in row])


def _chunks(rows: Sequence[Any], most: int) -> list[Sequence[Any]]:
    """`rows` in chunks whose sizes are powers of two (at most `most`), largest first: a
    statement's text depends on its row count, so this keeps the texts few (one per
    power of two) and SQLite's statement cache warm, at log2(n) statements for n rows."""
    chunks, start = [], 0
    while start < len(rows):
        size = min(most, 1 << ((len(rows) - start).bit_length() - 1))
        chunks.append(rows[start : start + size])
        start += size
    return chunks


def update_run(db: sqlite3.Connection, commit: Commit, state: bytes) -> int:
    """Write the commit to its run's row (compare-and-set on version); rows changed.

    `status` is indexed: a commit that keeps the status leaves it out of the SET, so a
    plain stage commit rewrites one row and no index page. A commit that most likely
    moves the run to another status (`_moves_status`) sets it at once: one statement,
    not a same-status attempt that matches nothing first.
    """
    values = _set_values(commit, state)
    if commit.owner is not None:  # a claim: it also takes the lease
        lease = (commit.status, commit.owner, commit.lease_until)
        return int(db.execute(_UPDATE_WITH_LEASE, (*lease, *values)).rowcount)
    if _moves_status(commit):
        return int(db.execute(_UPDATE_NEW_STATUS, (commit.status, *values)).rowcount)
    cursor = db.execute(_UPDATE_SAME_STATUS, (*values, commit.status))
    if cursor.rowcount == 0:
        cursor = db.execute(_UPDATE_NEW_STATUS, (commit.status, *values))
    return int(cursor.rowcount)


def _set_values(commit: Commit, state: bytes) -> tuple[Any, ...]:
    """The parameters of `_SET` (the row's new values, then its run id and expected
    version), shared by every UPDATE of a commit."""
    keeps_flag = commit.status in lifecycle.ACTIVE
    return (
        commit.stage, state, commit.checkpoint, maybe_encode(commit.error), commit.last_seq,
        commit.stage_runs, commit.updated_at, commit.wake_at, keeps_flag, keeps_flag,
        commit.run_id, commit.expected_version,
    )  # fmt: skip


def keeps_status(commit: Commit) -> bool:
    """Whether `commit` can go into `update_same_status`: it takes no lease and most
    likely keeps its run's status."""
    return commit.owner is None and not _moves_status(commit)


def same_status_row(commit: Commit, state: bytes) -> tuple[Any, ...]:
    """The commit's row for `update_same_status`: `_UPDATE_SAME_STATUS`'s parameters."""
    return (*_set_values(commit, state), commit.status)


def update_same_status(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Stage commits of many runs that keep their status, in a few UPDATE statements
    (`_chunks`; rows from `same_status_row`): each row is applied to
    its run if the stored version and status match. The rows changed: fewer than given
    if any did not match (the caller then applies them one by one to find which)."""
    changed = 0
    for chunk in _chunks(rows, _ROWS_PER_UPDATE):
        marks = ", ".join([_SAME_STATUS_MARKS] * len(chunk))
        params = [value for row in chunk for value in row]
        changed += db.execute(_UPDATE_SAME_STATUS_MANY.format(marks=marks), params).rowcount
    return changed


def _moves_status(commit: Commit) -> bool:
    """Whether `commit` most likely changes its run's status: a stage commit of a running
    run keeps "running"; any other status, and a commit carrying a pipeline-level event
    (the run starts, resumes, wakes, is retried or admitted), is a change. (A guess only
    saves a statement: setting the status it already has is still correct.)"""
    if commit.status != lifecycle.RUNNING:
        return True
    return any(event.name.startswith(_PIPELINE_EVENT) for event in commit.events)


def claim_requests(
    db: sqlite3.Connection, claimer: str, limit: int, max_bytes: int, now: float
) -> tuple[list[Request], int]:
    """Claim up to `limit` pending requests; those that cannot be read are answered
    "failed" at `now` and left out. The requests read, and how many were answered."""
    rows = db.execute(_CLAIM_REQUESTS, (CLAIMED, claimer, PENDING, limit, PENDING)).fetchall()
    readable, unreadable = claimed_requests(rows, max_bytes)
    for seq, answer in unreadable:
        db.execute(_ANSWER_BY_SEQ, (FAILED, answer, now, seq))
    return readable, len(unreadable)


def request_abort(db: sqlite3.Connection, run_id: str, reason: str | None) -> bool | None:
    """Set the run's abort flag if it is pending or running: whether it did (None: no
    such run)."""
    if db.execute(_REQUEST_ABORT, (reason, run_id)).rowcount == 1:
        return True
    if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
        return None
    return False


def abort_requests(db: sqlite3.Connection, run_ids: Sequence[str]) -> dict[str, str | None]:
    """The abort flags set among `run_ids`: one query per 5000 ids (ids SQLite cannot
    hold, text that is not UTF-8, are in no row and left out)."""
    wanted = [run_id for run_id in dict.fromkeys(run_ids) if is_utf8(run_id)]
    found: dict[str, str | None] = {}
    for start in range(0, len(wanted), _IDS_PER_QUERY):
        chunk = wanted[start : start + _IDS_PER_QUERY]
        query = _ABORT_REQUESTS.format(marks=", ".join("?" * len(chunk)))
        found.update(db.execute(query, chunk).fetchall())
    return found


def delete_finished(
    db: sqlite3.Connection, updated_before: float, statuses: Sequence[str], limit: int
) -> int:
    """Delete up to `limit` runs of `statuses` updated before `updated_before`, their
    journals and their admission claims; how many runs."""
    if not statuses:
        return 0
    found = _FINISHED.format(marks=", ".join("?" * len(statuses)))
    doomed = [(row[0],) for row in db.execute(found, (*statuses, updated_before, limit))]
    db.executemany("DELETE FROM events WHERE run_id = ?", doomed)
    db.executemany("DELETE FROM claims WHERE run_id = ?", doomed)
    db.executemany("DELETE FROM runs WHERE run_id = ?", doomed)
    return len(doomed)


VACUUM_PAGES: Final = 4096
"""Free pages given back to the file system per transaction (16 MiB of 4 KiB pages), so
reclaiming a large deletion never holds the write lock for long."""


def vacuum_some(db: sqlite3.Connection) -> bool:
    """Give up to VACUUM_PAGES free pages back, in one transaction of their own (the
    connection must be outside one); True if some were and more remain."""
    before = _pragma(db, "freelist_count")
    # executescript steps the pragma to its end (execute() would free a single page)
    db.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
    after = _pragma(db, "freelist_count")
    return bool(0 < after < before)


def vacuum(db: sqlite3.Connection) -> None:
    """Rewrite the whole file (VACUUM), outside a transaction: a file made with
    auto_vacuum NONE takes the INCREMENTAL set on this connection at opening."""
    db.execute("VACUUM")


def checkpoint(db: sqlite3.Connection) -> None:
    """Copy the WAL into the file and empty it: the file's own size drops to its pages."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def auto_vacuum(db: sqlite3.Connection) -> int:
    """The file's auto_vacuum mode: 0 NONE, 1 FULL, 2 INCREMENTAL."""
    return int(_pragma(db, "auto_vacuum"))


def _pragma(db: sqlite3.Connection, name: str) -> Any:
    return db.execute(f"PRAGMA {name}").fetchone()[0]
