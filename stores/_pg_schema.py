"""Keeping a PostgreSQL schema at this stageline's version: each migration's DDL, run on open.

The tables live in their own schema; `{s}` in the text here is that schema, quoted. The
version is kept in the schema's `stageline_meta` table, and a schema written by a newer
stageline is refused rather than misread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from stageline.core import mailbox
from stageline.core.errors import StoreError

from ._common import no_store
from ._fleet import TABLE as FLEET_TABLE
from ._schedules import TABLE as SCHEDULES_TABLE

SCHEMA_VERSION: Final = 9

# MIGRATIONS[n] takes a schema from version n - 1 to n. `{s}` is the schema. The same
# steps as SQLite's: 1 runs and journal, 2 leases (`owner`, `lease_until`), 3 the mailbox,
# 4 the abort flag (`abort_requested`, `abort_reason`), 5 the daemons' heartbeats (`daemons`),
# 6 time: `wake_at` on runs and the `schedules` table, 7 `trace` on runs (SPEC 18),
# 8 admission (SPEC 20): `priority` on runs, the `claims` and `admissions` tables,
# 9 pages of runs, newest first (stores/_pages.py): an index per filter ending in
# (created_at, run_id) (`runs_created` has been there since 1); `runs_status_created`
# replaces `runs_status` (status, pipeline_id), serving every lookup by status. The
# indexes are built inside the migration's transaction: writes to `runs` wait meanwhile
# (seconds per million runs).
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE {s}.runs (
            run_id text PRIMARY KEY,
            pipeline_id text NOT NULL,
            pipeline_version bigint NOT NULL,
            status text NOT NULL,
            stage text,
            state bytea NOT NULL,
            checkpoint bytea,
            error bytea,
            version bigint NOT NULL,
            last_seq bigint NOT NULL,
            stage_runs bigint NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL
        ) WITH (fillfactor = 80)""",
        "CREATE INDEX runs_status ON {s}.runs (status, pipeline_id)",
        'CREATE INDEX runs_created ON {s}.runs (created_at, run_id COLLATE "C")',
        """CREATE TABLE {s}.events (
            run_id text NOT NULL,
            seq bigint NOT NULL,
            name text NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ),
    2: ("ALTER TABLE {s}.runs ADD COLUMN owner text, ADD COLUMN lease_until double precision",),
    3: (
        """CREATE TABLE {s}.requests (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            request_id text NOT NULL UNIQUE,
            kind text NOT NULL,
            run_id text NOT NULL,
            pipeline_id text,
            args bytea NOT NULL,
            status text NOT NULL,
            posted_at double precision NOT NULL,
            claimed_by text,
            answered_at double precision,
            answer text
        )""",
        f"CREATE INDEX requests_pending ON {{s}}.requests (seq) WHERE status = '{mailbox.PENDING}'",
    ),
    4: ("ALTER TABLE {s}.runs ADD COLUMN abort_requested boolean, ADD COLUMN abort_reason text",),
    5: (FLEET_TABLE,),
    6: (
        "ALTER TABLE {s}.runs ADD COLUMN wake_at double precision",
        "CREATE INDEX runs_waking ON {s}.runs (wake_at) WHERE wake_at IS NOT NULL",
        SCHEDULES_TABLE,
    ),
    7: ("ALTER TABLE {s}.runs ADD COLUMN trace text",),
    8: (
        "ALTER TABLE {s}.runs ADD COLUMN priority bigint NOT NULL DEFAULT 0",
        """CREATE TABLE {s}.claims (
            run_id text NOT NULL,
            limit_name text NOT NULL,
            key text NOT NULL,
            max_running bigint NOT NULL,
            holding boolean NOT NULL,
            rank bigint NOT NULL,
            created_at double precision NOT NULL,
            PRIMARY KEY (run_id, limit_name, key)
        )""",
        "CREATE INDEX claims_line ON {s}.claims "
        '(limit_name, key, holding, rank, created_at, run_id COLLATE "C")',
        """CREATE TABLE {s}.admissions (
            limit_name text NOT NULL,
            key text NOT NULL,
            at double precision NOT NULL
        )""",
        "CREATE INDEX admissions_slot ON {s}.admissions (limit_name, key, at)",
    ),
    9: (
        "DROP INDEX IF EXISTS {s}.runs_status",
        'CREATE INDEX runs_status_created ON {s}.runs (status, created_at, run_id COLLATE "C")',
        "CREATE INDEX runs_pipeline_created ON {s}.runs "
        '(pipeline_id, created_at, run_id COLLATE "C")',
    ),
}

_META: Final = (
    "CREATE TABLE IF NOT EXISTS {s}.stageline_meta (key text PRIMARY KEY, value text NOT NULL)"
)
_READ_VERSION: Final = "SELECT value FROM {s}.stageline_meta WHERE key = 'schema_version'"
_WRITE_VERSION: Final = (
    "INSERT INTO {s}.stageline_meta VALUES ('schema_version', %s) "
    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)


def migrate(
    conn: Any, sql: Callable[[str], str], schema: str, where: str, create: bool = True
) -> None:
    """Create or upgrade the tables, one process at a time (advisory lock).

    `sql` puts the quoted schema into a statement's `{s}`. A schema already at this
    version is only read: no DDL, no lock, and no CREATE privilege needed, so a DBA may
    create the schema and run the first migration. `create=False`: a schema without
    stageline's tables is StoreError naming it, and nothing is created (an older
    version's tables are still upgraded).
    """
    found = schema_version(conn, sql, where)
    if found == SCHEMA_VERSION:
        return
    if found == 0 and not create:
        raise no_store(where, "the schema name (the URL's ?schema=)")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"stageline:{schema}",))
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if exists.fetchone() is None:
            conn.execute(sql("CREATE SCHEMA {s}"))
        conn.execute(sql(_META))
        found = schema_version(conn, sql, where)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(sql(statement))
        if found < SCHEMA_VERSION:
            conn.execute(sql(_WRITE_VERSION), (str(SCHEMA_VERSION),))


def schema_version(conn: Any, sql: Callable[[str], str], where: str) -> int:
    """The version stored in the schema (0: none yet); StoreError if it is too new."""
    meta = sql("{s}.stageline_meta")
    if conn.execute("SELECT to_regclass(%s)", (meta,)).fetchone() in (None, (None,)):
        return 0
    row = conn.execute(sql(_READ_VERSION)).fetchone()
    found = 0 if row is None else int(row[0])
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"the PostgreSQL store {where} has schema version {found}, newer "
            f"than this stageline understands ({SCHEMA_VERSION}); upgrade stageline"
        )
    return found
