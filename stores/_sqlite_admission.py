"""Admission control in a SqliteStore (SPEC section 20): the rules of stores/_admission.py
as statements over the `claims` and `admissions` tables.

Every function here takes the store's connection inside the transaction the store opened
(`BEGIN IMMEDIATE`): SQLite has one writer at a time, so the counting and the writing of
one admission are never interleaved with another's, in any process; a limit holds at
every instant.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from stageline.core import lifecycle
from stageline.core.admission import Claim
from stageline.core.store import Commit

from . import _sqlite_ops as ops
from ._common import conflict

# A claim's slot is held while its run is running with a lease not run out at `now`.
_HOLDS: Final = (
    f"c.holding = 1 AND r.status = '{lifecycle.RUNNING}' "
    "AND (r.lease_until IS NULL OR r.lease_until > ?)"
)
_CURRENT: Final = "SELECT version, priority, created_at FROM runs WHERE run_id = ?"
_HELD: Final = (
    "SELECT count(*) FROM claims c JOIN runs r ON r.run_id = c.run_id "
    f"WHERE c.limit_name = ? AND c.key = ? AND c.run_id <> ? AND {_HOLDS}"
)
# Ahead: a higher priority, else older, else a smaller run id (BINARY: code point order).
# A waiting claim keeps its run's place in line, `rank` (minus its priority) then age then
# run id, so "someone ahead" is one range of the `claims_line` index.
_AHEAD: Final = (
    "SELECT 1 FROM claims c JOIN runs r ON r.run_id = c.run_id "
    "WHERE c.limit_name = ?1 AND c.key = ?2 AND c.holding = 0 "
    "AND (c.rank, c.created_at, c.run_id) < (?4, ?5, ?3) "
    f"AND r.status = '{lifecycle.QUEUED}' LIMIT 1"
)
_PLACE: Final = "SELECT priority, created_at FROM runs WHERE run_id = ?"
_STARTED: Final = "SELECT count(*) FROM admissions WHERE limit_name = ? AND key = ? AND at > ?"
_FORGET: Final = "DELETE FROM claims WHERE run_id = ?"
_RECORD: Final = (
    "INSERT OR REPLACE INTO claims "
    "(run_id, limit_name, key, max_running, holding, rank, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_EXPIRE: Final = "DELETE FROM admissions WHERE limit_name = ? AND key = ? AND at <= ?"
_ADMITTED: Final = "INSERT INTO admissions VALUES (?, ?, ?)"
USAGE: Final = (
    f"SELECT c.limit_name, c.key, sum(CASE WHEN {_HOLDS.replace('?', '?1')} THEN 1 ELSE 0 END), "
    f"sum(CASE WHEN r.status = '{lifecycle.QUEUED}' THEN 1 ELSE 0 END) "
    "FROM claims c JOIN runs r ON r.run_id = c.run_id GROUP BY c.limit_name, c.key"
)
"""`limit_usage`'s rows (limit, key, running, queued); its one parameter is `now`."""


def admit(
    db: sqlite3.Connection,
    commit: Commit,
    data: ops.Encoded,
    claims: Sequence[Claim],
    now: float,
) -> bool:
    """Apply `commit` (its `data`) if every claim admits it at `now`, and record them as
    held; whether it did. ConflictError on a version mismatch, whatever the claims say."""
    current = db.execute(_CURRENT, (commit.run_id,)).fetchone()
    if current is None or current[0] != commit.expected_version:
        raise conflict(
            commit.run_id, commit.expected_version, None if current is None else current[0]
        )
    _, priority, created_at = current
    if not all(_admits(db, commit.run_id, priority, created_at, claim, now) for claim in claims):
        return False
    ops.apply_commit(db, commit, data)
    _record(db, commit.run_id, claims, (-priority, created_at), holding=True)
    for claim in claims:
        if claim.rate is not None:
            window = now - claim.rate[1]
            db.execute(_EXPIRE, (claim.limit, claim.key, window))
            db.execute(_ADMITTED, (claim.limit, claim.key, now))
    return True


def _admits(
    db: sqlite3.Connection, run_id: str, priority: int, created_at: float, claim: Claim, now: float
) -> bool:
    slot = (claim.limit, claim.key)
    held = db.execute(_HELD, (*slot, run_id, now)).fetchone()[0]
    if held >= claim.max_running:
        return False
    if db.execute(_AHEAD, (*slot, run_id, -priority, created_at)).fetchone() is not None:
        return False
    if claim.rate is not None:
        n, seconds = claim.rate
        started = db.execute(_STARTED, (*slot, now - seconds)).fetchone()[0]
        if started >= n:
            return False
    return True


def queue(
    db: sqlite3.Connection, commit: Commit, data: ops.Encoded, claims: Sequence[Claim]
) -> None:
    """Apply `commit` (the run goes "queued") and record its claims as waited for."""
    place = db.execute(_PLACE, (commit.run_id,)).fetchone()
    ops.apply_commit(db, commit, data)
    priority, created_at = place or (0, 0.0)
    _record(db, commit.run_id, claims, (-priority, created_at), holding=False)


def _record(
    db: sqlite3.Connection,
    run_id: str,
    claims: Sequence[Claim],
    place: tuple[int, float],
    *,
    holding: bool,
) -> None:
    """The run's claims are these (replacing what it had), held or waited for; `place`:
    minus the run's priority, and its creation time (its place in each line)."""
    db.execute(_FORGET, (run_id,))
    rows = [(run_id, c.limit, c.key, c.max_running, int(holding), *place) for c in claims]
    db.executemany(_RECORD, rows)
