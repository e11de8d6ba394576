"""The writes a SqliteStore groups in one transaction (stores/_sqlite_group.py): stage
commits and new runs, and the two ways a group applies them.

Every statement releases the GIL while SQLite runs it, and under load the daemon's
other threads take it in between, so a group leader pays a wait per statement: a
group's cost is its statement count more than its fsync. The **fast pass** therefore
writes the stage commits that keep their run's status (most of them: "running" stays
"running") in one UPDATE of many rows, each row still compare-and-set on its run's
version and status; the other members' rows one by one (a new run's INSERT, a commit
that starts, ends, pauses or sleeps its run); then the whole group's journal in one
multi-row INSERT. A group of n plain stage commits is four statements (BEGIN, UPDATE,
INSERT, COMMIT), not 5n + 2. A member written one by one whose version does not match
(ConflictError) or whose id is taken (RunExistsError) wrote nothing, so it simply
fails. Anything else (the many-row UPDATE matching fewer rows than it was given, which
a conflict causes; a value SQLite refuses) makes the caller roll the transaction back
and apply the group again in the **careful pass**: each member under a savepoint of its
own, so a conflict or refusal fails that member alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from stageline.core.errors import ConflictError, RunExistsError
from stageline.core.store import Commit, RunRecord

from ._common import RUN_COLUMNS, run_exists, run_values
from ._group import Member
from ._sqlite_ops import (
    Encoded,
    JournalRow,
    insert_events,
    keeps_status,
    same_status_row,
    update_commit,
    update_same_status,
)

_INSERT_RUN: Final = (
    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (run_id) DO NOTHING"
)
_NOTHING_WRITTEN: Final = (ConflictError, RunExistsError)


class Write(NamedTuple):
    """One write a group may hold: what it is (for messages), `apply(db)`, which writes
    its row in the open transaction (its result: a commit's new version), the journal
    rows that go with it, and, for a stage commit that keeps its run's status, the
    commit and its encoded state, which the fast pass writes in its one UPDATE of many
    runs (`update_same_status`) instead of calling `apply`."""

    run_id: str
    what: str
    apply: Callable[[sqlite3.Connection], Any]
    events: list[JournalRow]
    same_status: tuple[Commit, bytes] | None = None


def commit_write(commit: Commit, data: Encoded) -> Write:
    """A stage commit (its `encoded` data) as a group's write."""
    state, events = data
    return Write(
        commit.run_id,
        f"committing run {commit.run_id!r}",
        lambda db: update_commit(db, commit, state, journals=bool(events)),
        events,
        (commit, state) if keeps_status(commit) else None,
    )


def run_write(record: RunRecord, state: bytes) -> Write:
    """A new run's record (its `state` encoded) as a group's write."""
    what = f"creating run {record.run_id!r}"
    return Write(record.run_id, what, lambda db: insert_run(db, record, state), [])


def insert_run(db: sqlite3.Connection, record: RunRecord, state: bytes) -> None:
    """Insert a new run's row; RunExistsError (nothing written) if its id is taken."""
    if db.execute(_INSERT_RUN, run_values(record, state)).rowcount != 1:
        raise run_exists(record.run_id)


def apply_write(db: sqlite3.Connection, write: Write) -> Any:
    """One write, row and journal, in the open transaction: its result."""
    result = write.apply(db)
    insert_events(db, write.events)
    return result


def apply_fast(
    db: sqlite3.Connection, members: Sequence[Member]
) -> tuple[dict[Member, Any], dict[Member, Exception]]:
    """The fast pass (see the module): each applied member's result, and each member
    that wrote nothing with its ConflictError or RunExistsError. Any other exception
    propagates: the caller rolls back and applies the group with `apply_careful`. A
    group holding two writes of one run (a stale writer and a new one) goes there at
    once: only the careful pass applies them in the order they came."""
    if len({member.item.run_id for member in members}) != len(members):
        raise _NotAllMatched
    applied: dict[Member, Any] = {}
    failed: dict[Member, Exception] = {}
    batched = [member for member in members if member.item.same_status is not None]
    if len(batched) > 1:
        rows = [same_status_row(*member.item.same_status) for member in batched]
        if update_same_status(db, rows) != len(batched):
            raise _NotAllMatched  # a conflict (or a status changed): one by one finds whose
        applied = {m: m.item.same_status[0].expected_version + 1 for m in batched}
    for member in members:
        if member in applied:
            continue
        try:
            applied[member] = member.item.apply(db)
        except _NOTHING_WRITTEN as exc:
            failed[member] = exc
    insert_events(db, [row for member in applied for row in member.item.events])
    return applied, failed


class _NotAllMatched(Exception):
    """The fast pass cannot settle the group: its UPDATE of many runs matched fewer rows
    than it was given, or two members write one run."""


def apply_careful(
    db: sqlite3.Connection,
    members: Sequence[Member],
    refusal: Callable[[str, Exception], BaseException],
) -> dict[Member, Any]:
    """The careful pass: each member's write under a savepoint: one that fails is
    rolled back to its savepoint and given `refusal(what, exc)`; the others go on. A
    savepoint that cannot be rolled back (SQLite already rolled the whole transaction
    back: disk full, I/O error) raises: the whole group fails. Returns each applied
    member's result: the caller tells them once the transaction commits."""
    applied: dict[Member, Any] = {}
    for member in members:
        write: Write = member.item
        db.execute("SAVEPOINT member")
        try:
            applied[member] = apply_write(db, write)
        except Exception as exc:
            db.execute("ROLLBACK TO member")
            member.fail(refusal(write.what, exc))
        db.execute("RELEASE member")
    return applied


__all__ = [
    "Write",
    "apply_careful",
    "apply_fast",
    "apply_write",
    "commit_write",
    "run_write",
]
