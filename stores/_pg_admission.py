"""Admission control in a PostgresStore (SPEC section 20): the rules of stores/_admission.py
as statements over the `claims` and `admissions` tables, and a commit applied inside a
transaction (shared by `commit`, `admit` and `queue`).

Across processes a limit holds at every instant: `admit` takes a transaction-scoped
advisory lock per claimed (limit, key) before it counts, so two admissions to one slot
never count at once (READ COMMITTED: each statement after the lock sees every admission
committed before it). The locks are taken in one order (by their keys) so two admissions
claiming the same slots never deadlock; a schema's locks are its own (the key hashes the
schema's name too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from stageline.core import lifecycle
from stageline.core.admission import Claim
from stageline.core.store import Commit

from ._common import conflict
from ._pg_sql import VERSION_OF

if TYPE_CHECKING:
    from ._pg_pool import Connection

Sql = Callable[[str], str]
"""Puts the quoted schema into a statement's `{s}` (`Connections.sql`)."""

_LOCK: Final = "SELECT pg_advisory_xact_lock(%s)"
_PLACE: Final = "SELECT priority, created_at FROM {s}.runs WHERE run_id = %s"
# A claim's slot is held while its run is running with a lease not run out at `now`.
_HOLDS: Final = (
    f"c.holding AND r.status = '{lifecycle.RUNNING}' "
    "AND (r.lease_until IS NULL OR r.lease_until > %s)"
)
# Ahead: a higher priority, else older, else a smaller run id in code point order ("C");
# a waiting claim keeps its run's place (`rank`: minus its priority), so that is one range
# of the `claims_line` index.
_CHECK: Final = (
    "SELECT r.version, r.priority, r.created_at, "
    "(SELECT count(*) FROM {s}.claims c JOIN {s}.runs h ON h.run_id = c.run_id "
    "WHERE c.limit_name = %(limit)s AND c.key = %(key)s AND c.run_id <> r.run_id "
    f"AND c.holding AND h.status = '{lifecycle.RUNNING}' "
    "AND (h.lease_until IS NULL OR h.lease_until > %(now)s)), "
    "EXISTS (SELECT 1 FROM {s}.claims c JOIN {s}.runs q ON q.run_id = c.run_id "
    "WHERE c.limit_name = %(limit)s AND c.key = %(key)s AND NOT c.holding "
    'AND (c.rank, c.created_at, c.run_id COLLATE "C") '
    '< (-r.priority, r.created_at, r.run_id COLLATE "C") '
    f"AND q.status = '{lifecycle.QUEUED}'), "
    "(SELECT count(*) FROM {s}.admissions a WHERE a.limit_name = %(limit)s "
    "AND a.key = %(key)s AND a.at > %(since)s) "
    "FROM {s}.runs r WHERE r.run_id = %(run)s"
)
"""One claim's check in one round trip: the run's version, priority and creation time,
the slot's holders other than it, whether a waiting run is ahead of it, and the slot's
admissions since `since` (rate)."""
# One statement: the run's other claims go, these are written (or rewritten).
_RECORD: Final = (
    "WITH gone AS (DELETE FROM {s}.claims WHERE run_id = %(run)s AND (limit_name, key) "
    "NOT IN (SELECT * FROM unnest(%(limits)s::text[], %(keys)s::text[]))) "
    "INSERT INTO {s}.claims (run_id, limit_name, key, max_running, holding, rank, "
    "created_at) SELECT %(run)s, u.l, u.k, u.m, %(holding)s, %(rank)s, %(created)s "
    "FROM unnest(%(limits)s::text[], %(keys)s::text[], %(maxes)s::bigint[]) AS u(l, k, m) "
    "ON CONFLICT (run_id, limit_name, key) DO UPDATE SET max_running = excluded.max_running, "
    "holding = excluded.holding, rank = excluded.rank, created_at = excluded.created_at"
)
_EXPIRE: Final = "DELETE FROM {s}.admissions WHERE limit_name = %s AND key = %s AND at <= %s"
_ADMITTED: Final = "INSERT INTO {s}.admissions (limit_name, key, at) VALUES (%s, %s, %s)"
USAGE: Final = (
    f"SELECT c.limit_name, c.key, count(*) FILTER (WHERE {_HOLDS}), "
    f"count(*) FILTER (WHERE r.status = '{lifecycle.QUEUED}') "
    "FROM {s}.claims c JOIN {s}.runs r ON r.run_id = c.run_id GROUP BY c.limit_name, c.key"
)
"""`limit_usage`'s rows (limit, key, running, queued); its one parameter is `now`."""


def apply_commit(
    conn: Connection, sql: Sql, commit: Commit, statement: tuple[str, tuple[Any, ...]]
) -> int:
    """Run a commit's `statement` (text and parameters, from the store): the run's new
    version; ConflictError if its version did not match."""
    row = conn.execute(sql(statement[0]), statement[1]).fetchone()
    if row is None:
        found = conn.execute(sql(VERSION_OF), (commit.run_id,)).fetchone()
        raise conflict(commit.run_id, commit.expected_version, None if found is None else found[0])
    return int(row[0])


def admit(
    conn: Connection,
    sql: Sql,
    commit: Commit,
    statement: tuple[str, tuple[Any, ...]],
    claims: Sequence[Claim],
    now: float,
    schema: str,
) -> bool:
    """In one transaction: lock the claims' slots, then apply the commit (`statement`) and
    record the claims as held if every one admits the run at `now`; whether it did.
    ConflictError on a version mismatch, whatever the claims say.

    A refusal seen before any lock is taken is final: the counts only read committed
    rows, and a slot that frees meanwhile is found by the next pass. So a run that must
    wait costs one round trip per check and never holds a slot's lock.
    """
    if not _admitted(conn, sql, commit, claims, now, lock=False):
        return False
    with conn.transaction():
        for key in lock_keys(schema, claims):
            conn.execute(_LOCK, (key,))
        place = _admitted(conn, sql, commit, claims, now, lock=True)
        if not place:
            return False
        apply_commit(conn, sql, commit, statement)
        _record(conn, sql, commit.run_id, claims, place, holding=True)
        for claim in claims:
            if claim.rate is not None:
                conn.execute(sql(_EXPIRE), (claim.limit, claim.key, now - claim.rate[1]))
                conn.execute(sql(_ADMITTED), (claim.limit, claim.key, now))
    return True


def _admitted(
    conn: Connection, sql: Sql, commit: Commit, claims: Sequence[Claim], now: float, lock: bool
) -> tuple[Any, ...]:
    """The run's place in line if every claim admits it now, else (); with `lock`, its row
    is locked by the first check. ConflictError on a stale version."""
    place: tuple[Any, ...] = ()
    for index, claim in enumerate(claims):
        since = now - claim.rate[1] if claim.rate is not None else now
        params = {"run": commit.run_id, "limit": claim.limit, "key": claim.key, "now": now,
                  "since": since}  # fmt: skip
        locking = lock and index == 0  # the first check locks the run's row
        row = conn.execute(sql(_CHECK + (" FOR UPDATE OF r" if locking else "")), params).fetchone()
        if row is None or row[0] != commit.expected_version:
            found = None if row is None else row[0]
            raise conflict(commit.run_id, commit.expected_version, found)
        _, priority, created_at, held, ahead, started = row
        if held >= claim.max_running or ahead:
            return ()
        if claim.rate is not None and started >= claim.rate[0]:
            return ()
        place = (-priority, created_at)
    return place


def queue(
    conn: Connection,
    sql: Sql,
    commit: Commit,
    statement: tuple[str, tuple[Any, ...]],
    claims: Sequence[Claim],
) -> None:
    """In one transaction: apply the commit (the run goes "queued") and record its claims
    as waited for."""
    with conn.transaction():
        place = conn.execute(sql(_PLACE), (commit.run_id,)).fetchone()
        apply_commit(conn, sql, commit, statement)
        priority, created_at = place or (0, 0.0)
        _record(conn, sql, commit.run_id, claims, (-priority, created_at), holding=False)


def _record(
    conn: Connection,
    sql: Sql,
    run_id: str,
    claims: Sequence[Claim],
    place: tuple[Any, ...],
    *,
    holding: bool,
) -> None:
    """The run's claims are these (replacing what it had; one row per slot, the last
    claim of a slot given twice), held or waited for; `place`: minus the run's priority,
    and its creation time (its place in each line)."""
    slots = {(c.limit, c.key): c.max_running for c in claims}
    params = {
        "run": run_id, "holding": holding, "rank": place[0], "created": place[1],
        "limits": [s[0] for s in slots], "keys": [s[1] for s in slots],
        "maxes": list(slots.values()),
    }  # fmt: skip
    conn.execute(sql(_RECORD), params)


def lock_keys(schema: str, claims: Sequence[Claim]) -> list[int]:
    """The advisory lock keys of the claims' slots in this schema, without repeats, in the
    order every admission takes them (signed 64-bit, as `pg_advisory_xact_lock` takes)."""
    keys = set()
    for claim in claims:
        text = "\x1f".join((schema, claim.limit, claim.key)).encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(text, digest_size=8, person=b"stageline-limit").digest()
        keys.add(int.from_bytes(digest, "big", signed=True))
    return sorted(keys)
