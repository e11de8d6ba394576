"""Opening a SqliteStore's file: where it is, its settings, and its schema's migrations.

The store's path is always a plain file path, never a SQLite URI: `file:x.db` is a file
named `file:x.db` (opened through a URI this module builds, so SQLite never reads options
out of a name). A new file is created with mode 0600 and `auto_vacuum=INCREMENTAL` (set
before its first table, the only time SQLite takes it), so deleted runs' pages can be
given back to the file system (`SqliteStore.reclaim_space`).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse

from stageline.core.errors import StoreError

from ._common import no_store
from ._fleet import TABLE as FLEET_TABLE
from ._schedules import TABLE as SCHEDULES_TABLE

SCHEMA_VERSION = 9

WAL_AUTOCHECKPOINT_PAGES = 256
"""Checkpoint the WAL once it holds this many pages (SQLite's default is 1000). After a
checkpoint the next commits overwrite the WAL from its start instead of growing it, and
an fsync that must also record a larger file costs about a third more: with 256 pages a
new file reaches that cheaper regime after about a hundred stage commits, not four hundred,
for a few more (small) checkpoints."""

_META = "CREATE TABLE IF NOT EXISTS stageline_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# MIGRATIONS[v] takes a file from schema version v - 1 to v (0: a new file). Each is
# applied once, in one transaction, so files written by an older stageline keep working.
# 1: the first release. 2: `owner` and `lease_until` on runs (leases for recovery).
# 3: the mailbox (`requests`). 4: the abort flag (`abort_requested`, `abort_reason`).
# 5: the daemons' heartbeats (`daemons`, stores/_fleet.py). 6: time (SPEC 15): `wake_at`
# on runs (sleeping runs, pause expiries) and the `schedules` table (stores/_schedules.py).
# 7: `trace` on runs (the span context of a run's last segment, SPEC 18). 8: admission
# (SPEC 20): `priority` on runs, each run's `claims` (held or waited for) and the
# `admissions` of rated limits (stores/_sqlite_admission.py). 9: pages of runs, newest first
# (stores/_pages.py): an index per filter ending in (created_at, run_id);
# `runs_status_created` replaces `runs_status` (status, pipeline_id) for every lookup by status.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT PRIMARY KEY,
            pipeline_id TEXT NOT NULL,
            pipeline_version INTEGER NOT NULL,
            status TEXT NOT NULL,
            stage TEXT,
            state BLOB NOT NULL,
            checkpoint BLOB,
            error BLOB,
            version INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            stage_runs INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS runs_status ON runs (status, pipeline_id)",
        """CREATE TABLE IF NOT EXISTS events (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID""",
    ),
    2: (
        "ALTER TABLE runs ADD COLUMN owner TEXT",
        "ALTER TABLE runs ADD COLUMN lease_until REAL",
    ),
    3: (
        """CREATE TABLE IF NOT EXISTS requests (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            run_id TEXT NOT NULL,
            pipeline_id TEXT,
            args BLOB NOT NULL,
            status TEXT NOT NULL,
            posted_at REAL NOT NULL,
            claimed_by TEXT,
            answered_at REAL,
            answer TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS requests_status ON requests (status, seq)",
    ),
    4: (
        "ALTER TABLE runs ADD COLUMN abort_requested INTEGER",
        "ALTER TABLE runs ADD COLUMN abort_reason TEXT",
    ),
    5: (FLEET_TABLE.replace("{s}.", ""),),
    6: (
        "ALTER TABLE runs ADD COLUMN wake_at REAL",
        "CREATE INDEX IF NOT EXISTS runs_waking ON runs (wake_at) WHERE wake_at IS NOT NULL",
        SCHEDULES_TABLE.replace("{s}.", ""),
    ),
    7: ("ALTER TABLE runs ADD COLUMN trace TEXT",),
    8: (
        "ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE IF NOT EXISTS claims (
            run_id TEXT NOT NULL,
            limit_name TEXT NOT NULL,
            key TEXT NOT NULL,
            max_running INTEGER NOT NULL,
            holding INTEGER NOT NULL,
            rank INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, limit_name, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX IF NOT EXISTS claims_line ON claims "
        "(limit_name, key, holding, rank, created_at, run_id)",
        """CREATE TABLE IF NOT EXISTS admissions (
            limit_name TEXT NOT NULL,
            key TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS admissions_slot ON admissions (limit_name, key, at)",
    ),
    9: (
        "DROP INDEX IF EXISTS runs_status",
        "CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at, run_id)",
        "CREATE INDEX IF NOT EXISTS runs_status_created ON runs (status, created_at, run_id)",
        "CREATE INDEX IF NOT EXISTS runs_pipeline_created ON runs "
        "(pipeline_id, created_at, run_id)",
    ),
}


_META = "CREATE TABLE IF NOT EXISTS stageline_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_IS_STORE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stageline_meta'"


def connect(path: str, *, create: bool, timeout: float) -> sqlite3.Connection:
    """A connection to the store file at `path` (autocommit, usable from any thread).

    With `create=False` a missing file, or one without stageline's tables, is StoreError
    naming its absolute path, and nothing is created (no file, no -wal or -shm).
    """
    if path == ":memory:":
        return _open(path, uri=False, timeout=timeout)
    if not create and not os.path.exists(path):
        raise no_store(os.path.abspath(path))
    if create:
        create_private(path)
    db = _open(_uri(path, create), uri=True, timeout=timeout)
    try:
        if not create and db.execute(_IS_STORE).fetchone() is None:
            raise no_store(f"{os.path.abspath(path)} (the file has no stageline tables)")
    except BaseException:
        db.close()
        raise
    return db


def _open(target: str, *, uri: bool, timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(
        target, uri=uri, isolation_level=None, check_same_thread=False, timeout=timeout
    )


def _uri(path: str, create: bool) -> str:
    """A URI naming exactly the file `path` (any character quoted); `mode=rw` never
    creates a file, even one deleted since it was looked for."""
    quoted = urllib.parse.quote(os.fsencode(os.path.abspath(path)))
    return f"file:{quoted}?mode={'rwc' if create else 'rw'}"


def configure(db: sqlite3.Connection, synchronous: str) -> None:
    """The connection's settings, and the meta table (a new file gets its first table
    only after `auto_vacuum` is set)."""
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes on a new file; see reclaim_space
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    db.execute(_META)


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the file up to SCHEMA_VERSION, one migration at a time (inside a transaction)."""
    row = db.execute("SELECT value FROM stageline_meta WHERE key = 'schema_version'").fetchone()
    found = 0 if row is None else int(row[0])
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{path!r} has schema version {found}, newer than this stageline "
            f"understands ({SCHEMA_VERSION}); upgrade stageline"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[version]:
            db.execute(statement)
    if found != SCHEMA_VERSION:
        db.execute(
            "INSERT OR REPLACE INTO stageline_meta VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )


def create_private(path: str) -> None:
    """Create the database file with mode 0600 unless it exists (or is not a file)."""
    if path == ":memory:" or os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # another process created it first
    except OSError as exc:
        raise sqlite3.OperationalError(f"cannot create the file: {exc}") from exc
    os.close(fd)
