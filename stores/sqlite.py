"""SqliteStore: the embedded default. WAL, synchronous=FULL, one transaction per stage.

One connection per store, guarded by a lock: SQLite has one writer at a time anyway, and
a stage commit is a single short `BEGIN IMMEDIATE ... COMMIT` (one fsync of the WAL with
synchronous=FULL). State, checkpoints, errors and events are cbor2 bytes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from stageline.core import lifecycle
from stageline.core.clock import Clock, SystemClock
from stageline.core.codec import DEFAULT_MAX_BYTES, decode, encode, encode_trusted
from stageline.core.errors import StoreError
from stageline.core.events import Event, event_from_journal, is_journaled, journal_record
from stageline.core.mailbox import CLAIMED, DONE, FAILED, PENDING, Request
from stageline.core.store import Commit, RunInfo, RunRecord
from stageline.core.text import unencodable_part

from ._common import (
    PRUNE_SQL,
    REQUEST_COLUMNS,
    RUN_COLUMNS,
    conflict,
    fitting,
    in_batches,
    maybe_encode,
    record_from_row,
    request_exists,
    request_from_row,
    request_not_found,
    run_exists,
    run_not_found,
)

SCHEMA_VERSION = 3

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
# 3: the mailbox (`requests`).
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
}


_SET = (
    "stage = ?, state = ?, checkpoint = ?, error = ?, version = version + 1, last_seq = ?, "
    "stage_runs = ?, updated_at = ? WHERE run_id = ? AND version = ?"
)
_UPDATE_SAME_STATUS = f"UPDATE runs SET {_SET} AND status = ?"
_UPDATE_NEW_STATUS = f"UPDATE runs SET status = ?, {_SET}"
_UPDATE_WITH_LEASE = f"UPDATE runs SET status = ?, owner = ?, lease_until = ?, {_SET}"
_PRUNE = PRUNE_SQL.format(table="requests", mark="?")
_SET_CHECKPOINT = (
    "UPDATE runs SET checkpoint = ? WHERE run_id = ? "
    f"AND (? = 0 OR status = '{lifecycle.PAUSED}') AND (? IS NULL OR version = ?)"
)
_CLAIM = (
    "UPDATE runs SET owner = ?1, lease_until = ?2 WHERE run_id = ?3 "
    f"AND status IN {lifecycle.sql_list(lifecycle.ACTIVE)} "
    "AND (owner IS NULL OR owner = ?1 OR lease_until IS NULL OR lease_until <= ?4)"
)


class SqliteStore:
    """A Store in one SQLite file.

    A new file is created readable and writable by its owner only (mode 0600): it holds
    every run's state. SQLite gives its -wal and -shm files the same mode.

    `synchronous` is "FULL" (default: a stage commit survives power loss) or "NORMAL"
    (survives a process crash, not power loss). `busy_timeout` is how long a write waits
    for another process holding the file before failing with StoreError.
    `max_state_bytes` bounds a run's encoded state and each journal record: a commit over
    it is refused with StateTooLarge (nothing written), since reading it back would be.
    `clock` (default: the system clock) dates the answers to mailbox requests.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        max_state_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise StoreError(f"synchronous must be FULL, NORMAL, EXTRA or OFF, got {synchronous!r}")
        self.path = os.fspath(path)
        self.max_state_bytes = max_state_bytes
        self.clock: Clock = SystemClock() if clock is None else clock
        self._lock = threading.Lock()
        self._closed = False
        try:
            _create_private(self.path)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            self._db.execute(_META)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        self._mailbox_writes = 0  # data_version does not move for this connection's writes
        with self._transaction(f"migrating the schema of {self.path!r}") as db:
            _migrate(db, self.path)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"SQLite store {self.path!r} is closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{what} failed in {self.path!r}: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{what} failed in {self.path!r}: {exc}") from exc
                if isinstance(exc, UnicodeEncodeError):
                    raise _not_text(what, exc) from exc
                raise

    def _rollback(self) -> None:
        with suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._closed:
                raise StoreError(f"SQLite store {self.path!r} is closed")
            try:
                return self._db.execute(sql, params).fetchall()
            except UnicodeEncodeError:
                return []  # text that is not UTF-8 (lone surrogates) was never stored
            except sqlite3.Error as exc:
                raise StoreError(f"reading {self.path!r} failed: {exc}") from exc

    def _fits(self, run_id: str, what: str, data: bytes) -> bytes:
        return fitting(run_id, what, data, self.max_state_bytes)

    def create_run(self, record: RunRecord) -> None:
        state = self._fits(record.run_id, "state", encode(record.state))
        with self._transaction(f"creating run {record.run_id!r}") as db:
            exists = db.execute("SELECT 1 FROM runs WHERE run_id = ?", (record.run_id,))
            if exists.fetchone() is not None:
                raise run_exists(record.run_id)
            db.execute(
                f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.run_id,
                    record.pipeline_id,
                    record.pipeline_version,
                    record.status,
                    record.stage,
                    state,
                    record.checkpoint,
                    maybe_encode(record.error),
                    record.version,
                    record.last_seq,
                    record.stage_runs,
                    record.created_at,
                    record.updated_at,
                    record.owner,
                    record.lease_until,
                ),
            )

    def load_run(self, run_id: str) -> RunRecord:
        rows = self._query(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise run_not_found(run_id)
        return record_from_row(rows[0], self.max_state_bytes)

    def commit(self, commit: Commit) -> int:
        fits = self._fits
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
        with self._transaction(f"committing run {commit.run_id!r}") as db:
            if _update_run(db, commit, state) != 1:
                row = db.execute("SELECT version FROM runs WHERE run_id = ?", (commit.run_id,))
                found = row.fetchone()
                raise conflict(commit.run_id, commit.expected_version, found and found[0])
            if events:
                db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", events)
        return int(commit.expected_version) + 1

    def set_checkpoint(
        self,
        run_id: str,
        checkpoint: bytes | None,
        *,
        only_if_paused: bool = True,
        expected_version: int | None = None,
    ) -> bool:
        with self._transaction(f"writing the checkpoint of run {run_id!r}") as db:
            cursor = db.execute(
                _SET_CHECKPOINT,
                (checkpoint, run_id, int(only_if_paused), expected_version, expected_version),
            )
            if cursor.rowcount == 1:
                return True
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise run_not_found(run_id)
            return False

    def claim_run(self, run_id: str, owner: str, lease_until: float, *, now: float) -> bool:
        with self._transaction(f"claiming run {run_id!r}") as db:
            cursor = db.execute(_CLAIM, (owner, lease_until, run_id, now))
            if cursor.rowcount == 1:
                return True
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise run_not_found(run_id)
            return False

    def renew_leases(self, owner: str, run_ids: Sequence[str], lease_until: float) -> list[str]:
        renewed = []
        with self._transaction(f"renewing the leases of {owner!r}") as db:
            for run_id in run_ids:
                cursor = db.execute(
                    "UPDATE runs SET lease_until = ? WHERE run_id = ? AND owner = ?",
                    (lease_until, run_id, owner),
                )
                if cursor.rowcount == 1:
                    renewed.append(run_id)
        return renewed

    def get_run(self, run_id: str) -> RunInfo:
        return self.load_run(run_id).info()

    def list_runs(self, status: str | None = None, pipeline_id: str | None = None) -> list[RunInfo]:
        rows = self._query(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR status = ?1) "
            "AND (?2 IS NULL OR pipeline_id = ?2) ORDER BY created_at, run_id",
            (status, pipeline_id),
        )
        return [record_from_row(row, self.max_state_bytes).info() for row in rows]

    def read_events(self, run_id: str, after_seq: int = 0) -> list[Event]:
        run = self._query("SELECT pipeline_id FROM runs WHERE run_id = ?", (run_id,))
        if not run:
            raise run_not_found(run_id)
        rows = self._query(
            "SELECT name, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, after_seq),
        )
        return [
            event_from_journal(
                decode(data, max_bytes=self.max_state_bytes, what="journal event", patches=True),
                name,
                run_id,
                run[0][0],
            )
            for name, data in rows
        ]

    def post_request(self, request: Request) -> None:
        with self._transaction(f"posting request {request.request_id!r}") as db:
            try:
                db.execute(
                    f"INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        request.request_id,
                        request.kind,
                        request.run_id,
                        request.posted_at,
                        request.pipeline_id,
                        encode(request.args),
                        PENDING,
                        None,
                        None,
                        None,
                    ),
                )
            except sqlite3.IntegrityError:
                raise request_exists(request.request_id) from None
            self._mailbox_writes += 1

    def claim_requests(self, claimer: str, limit: int = 16) -> list[Request]:
        with self._transaction("claiming mailbox requests") as db:
            rows = db.execute(
                f"UPDATE requests SET status = ?, claimed_by = ? WHERE seq IN "
                f"(SELECT seq FROM requests WHERE status = ? ORDER BY seq LIMIT ?) "
                f"AND status = ? RETURNING seq, {REQUEST_COLUMNS}",
                (CLAIMED, claimer, PENDING, limit, PENDING),
            ).fetchall()
        return [request_from_row(row[1:]) for row in sorted(rows)]

    def answer_request(self, request_id: str, error: str | None = None) -> None:
        with self._transaction(f"answering request {request_id!r}") as db:
            cursor = db.execute(
                "UPDATE requests SET status = ?, answer = ?, answered_at = ? WHERE request_id = ?",
                (FAILED if error else DONE, error, self.clock.wall(), request_id),
            )
            if cursor.rowcount != 1:
                raise request_not_found(request_id)
            self._mailbox_writes += 1

    def get_request(self, request_id: str) -> Request:
        rows = self._query(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ?", (request_id,)
        )
        if not rows:
            raise request_not_found(request_id)
        return request_from_row(rows[0])

    def prune_requests(self, answered_before: float) -> int:
        def delete_batch(limit: int) -> int:
            with self._transaction("pruning answered requests") as db:
                params = (DONE, FAILED, answered_before, limit)
                return int(db.execute(_PRUNE, params).rowcount)

        return in_batches(delete_batch)

    def mailbox_version(self) -> int:
        """`PRAGMA data_version` (other connections' commits) plus this store's own posts."""
        rows = self._query("PRAGMA data_version", ())
        return int(rows[0][0]) + self._mailbox_writes

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _update_run(db: sqlite3.Connection, commit: Commit, state: bytes) -> int:
    """Write the commit to its run's row (compare-and-set on version); rows changed.

    `status` is indexed: a commit that keeps the status leaves it out of the SET, so a
    plain stage commit rewrites one row and no index page.
    """
    values = (
        commit.stage,
        state,
        commit.checkpoint,
        maybe_encode(commit.error),
        commit.last_seq,
        commit.stage_runs,
        commit.updated_at,
        commit.run_id,
        commit.expected_version,
    )
    if commit.owner is not None:  # a claim: it also takes the lease
        lease = (commit.status, commit.owner, commit.lease_until)
        return int(db.execute(_UPDATE_WITH_LEASE, (*lease, *values)).rowcount)
    cursor = db.execute(_UPDATE_SAME_STATUS, (*values, commit.status))
    if cursor.rowcount == 0:
        cursor = db.execute(_UPDATE_NEW_STATUS, (commit.status, *values))
    return int(cursor.rowcount)


def _migrate(db: sqlite3.Connection, path: str) -> None:
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


def _create_private(path: str) -> None:
    """Create the database file with mode 0600 unless it exists (or is not a file path)."""
    if path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # another process created it first
    except OSError as exc:
        raise sqlite3.OperationalError(f"cannot create the file: {exc}") from exc
    os.close(fd)


def _not_text(what: str, exc: UnicodeEncodeError) -> StoreError:
    """A str with lone surrogates (bytes that were not UTF-8, e.g. from a shell argument)."""
    bad = unencodable_part(exc)
    return StoreError(
        f"{what} failed: a run id, pipeline id or other text holds {bad}, which is not "
        "valid Unicode (it came from bytes that are not UTF-8); use valid UTF-8 text"
    )
