"""The SQL text of every statement a PostgresStore runs once its schema is in place.

`{s}` is the schema (quoted when a statement runs); every value is a `%s` parameter, and
only status words from `stageline.core` are written into the text.
"""

from __future__ import annotations

from typing import Final

from stageline.core import lifecycle

from ._common import PRUNE_SQL, RUN_COLUMNS
from ._rows import REQUEST_COLUMNS

POSTED: Final = "posted"
"""The NOTIFY payload of a posted request."""
ANSWERED: Final = "answered"
"""The NOTIFY payload of an answered request."""
ABORT: Final = "abort"
"""The NOTIFY payload of an abort flag set on a run (a daemon waiting for posts wakes)."""

# ------------------------------------------------------------------------------- runs

INSERT_RUN: Final = (
    f"INSERT INTO {{s}}.runs ({RUN_COLUMNS}) VALUES "
    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id) DO NOTHING"
)
LOAD_RUN: Final = f"SELECT {RUN_COLUMNS} FROM {{s}}.runs WHERE run_id = %s"
RUN_EXISTS: Final = "SELECT 1 FROM {s}.runs WHERE run_id = %s"
VERSION_OF: Final = "SELECT version FROM {s}.runs WHERE run_id = %s"
LIST_RUNS: Final = (
    f"SELECT {RUN_COLUMNS} FROM {{s}}.runs "
    "WHERE (%s::text IS NULL OR status = %s) AND (%s::text IS NULL OR pipeline_id = %s) "
    'ORDER BY created_at, run_id COLLATE "C"'
)
LIST_WAKING: Final = (
    "SELECT run_id, pipeline_id, status, wake_at FROM {s}.runs WHERE wake_at IS NOT NULL "
    f"AND status IN {lifecycle.sql_list(lifecycle.WAITING)} "
    "AND (%s::text IS NULL OR pipeline_id = %s) AND (%s::float8 IS NULL OR wake_at <= %s) "
    "ORDER BY wake_at LIMIT %s"
)
READ_EVENTS: Final = (
    "SELECT r.pipeline_id, e.name, e.data FROM {s}.runs r "
    "LEFT JOIN {s}.events e ON e.run_id = r.run_id AND e.seq > %s "
    "WHERE r.run_id = %s ORDER BY e.seq"
)
SET_CHECKPOINT: Final = (
    "UPDATE {s}.runs SET checkpoint = %s WHERE run_id = %s "
    f"AND (NOT %s OR status = '{lifecycle.PAUSED}') AND (%s::bigint IS NULL OR version = %s)"
)
SET_TRACE: Final = "UPDATE {s}.runs SET trace = %s WHERE run_id = %s"
# The rows are locked in run id order (code point order, "C"), the order in which a group
# commit (stores/_pg_group.py) writes its runs, so the two never deadlock.
RENEW_LEASES: Final = (
    "UPDATE {s}.runs SET lease_until = %s WHERE run_id IN (SELECT run_id FROM {s}.runs "
    'WHERE owner = %s AND run_id = ANY(%s) ORDER BY run_id COLLATE "C" FOR UPDATE) '
    "RETURNING run_id"
)

# A commit with an owner also takes the run's lease; without one the lease is kept. The
# abort flag is kept while the run stays pending or running (the first boolean), cleared
# by the commit that ends or pauses it.
_UPDATE: Final = (
    "UPDATE {s}.runs SET status = %s, stage = %s, state = %s, checkpoint = %s, error = %s, "
    "version = version + 1, last_seq = %s, stage_runs = %s, updated_at = %s, wake_at = %s, "
    "owner = COALESCE(%s, owner), "
    "lease_until = CASE WHEN %s::text IS NULL THEN lease_until ELSE %s::float8 END, "
    "abort_requested = CASE WHEN %s::boolean THEN abort_requested END, "
    "abort_reason = CASE WHEN %s::boolean THEN abort_reason END "
    "WHERE run_id = %s AND version = %s"
)
COMMIT: Final = _UPDATE + " RETURNING version"
COMMIT_WITH_EVENTS: Final = (
    "WITH updated AS (" + _UPDATE + " RETURNING version), "
    "journal AS (INSERT INTO {s}.events (run_id, seq, name, data) "
    "SELECT %s, e.seq, e.name, e.data "
    "FROM unnest(%s::bigint[], %s::text[], %s::bytea[]) AS e(seq, name, data) "
    "WHERE EXISTS (SELECT 1 FROM updated)), "
    # a run that leaves running or queued (it ends, pauses, sleeps) holds no slot any more
    "released AS (DELETE FROM {s}.claims WHERE run_id = %s AND %s::boolean "
    "AND EXISTS (SELECT 1 FROM updated)) "
    # the journal grew: a NOTIFY on the journal channel (payload: the run id), sent at commit
    "SELECT version, pg_notify(%s, %s) FROM updated"
)
# A claim skips a row another transaction holds (its owner committing, or another
# claimer): that run is not orphaned, or someone else is taking it.
CLAIM_RUN: Final = (
    "UPDATE {s}.runs SET owner = %s, lease_until = %s WHERE run_id = ("
    "SELECT run_id FROM {s}.runs WHERE run_id = %s "
    f"AND status IN {lifecycle.sql_list(lifecycle.ACTIVE)} "
    "AND (owner IS NULL OR owner = %s OR lease_until IS NULL OR lease_until <= %s) "
    "FOR UPDATE SKIP LOCKED)"
)

REQUEST_ABORT: Final = (
    "WITH flagged AS (UPDATE {s}.runs SET abort_requested = true, abort_reason = %s "
    f"WHERE run_id = %s AND status IN {lifecycle.sql_list(lifecycle.ACTIVE)} RETURNING 1) "
    f"SELECT pg_notify(%s, '{ABORT}') FROM flagged"
)
ABORT_REQUESTS: Final = (
    "SELECT run_id, abort_reason FROM {s}.runs WHERE run_id = ANY(%s) AND abort_requested"
)
# Retention: the rows are locked (a run being retried at this moment is skipped, and one
# changed since the snapshot is checked again), then the journal, the admission claims and
# the runs go in the same statement, so in one transaction.
DELETE_FINISHED: Final = (
    "WITH doomed AS MATERIALIZED (SELECT run_id FROM {s}.runs "
    "WHERE status = ANY(%s) AND updated_at < %s LIMIT %s FOR UPDATE SKIP LOCKED), "
    "journal AS (DELETE FROM {s}.events e USING doomed WHERE e.run_id = doomed.run_id), "
    "claimed AS (DELETE FROM {s}.claims c USING doomed WHERE c.run_id = doomed.run_id), "
    "gone AS (DELETE FROM {s}.runs r USING doomed WHERE r.run_id = doomed.run_id "
    "RETURNING 1) SELECT count(*) FROM gone"
)

# ---------------------------------------------------------------------------- mailbox


def _prefixed(prefix: str, columns: str) -> str:
    return ", ".join(prefix + column.strip() for column in columns.split(","))


POST_REQUEST: Final = (
    "WITH posted AS (INSERT INTO {s}.requests "
    "(request_id, kind, run_id, posted_at, pipeline_id, args, status) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (request_id) DO NOTHING RETURNING 1) "
    f"SELECT pg_notify(%s, '{POSTED}') FROM posted"
)
# The CTE runs once (MATERIALIZED): `seq IN (subquery with LIMIT)` may be re-evaluated
# by the planner and claim more than `limit`.
CLAIM_REQUESTS: Final = (
    "WITH picked AS MATERIALIZED (SELECT seq FROM {s}.requests WHERE status = %s "
    "ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED) "
    "UPDATE {s}.requests r SET status = %s, claimed_by = %s FROM picked "
    f"WHERE r.seq = picked.seq RETURNING r.seq, {_prefixed('r.', REQUEST_COLUMNS)}"
)
ANSWER_REQUEST: Final = (
    "WITH answered AS (UPDATE {s}.requests "
    "SET status = %s, answer = %s, answered_at = %s "
    "WHERE request_id = %s RETURNING 1) "
    f"SELECT pg_notify(%s, '{ANSWERED}') FROM answered"
)
ANSWER_UNREADABLE: Final = (
    "WITH answered AS (UPDATE {s}.requests SET status = %s, answer = %s, answered_at = %s "
    "WHERE seq = %s RETURNING 1) "
    f"SELECT pg_notify(%s, '{ANSWERED}') FROM answered"
)
GET_REQUEST: Final = f"SELECT {REQUEST_COLUMNS} FROM {{s}}.requests WHERE request_id = %s"
PRUNE_REQUESTS: Final = PRUNE_SQL.format(table="{s}.requests", mark="%s")
