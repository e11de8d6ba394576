"""SqliteStore: the embedded default. WAL, synchronous=FULL, one transaction per stage.

One connection per store, guarded by a lock: SQLite has one writer at a time anyway, and
a stage commit is a single short `BEGIN IMMEDIATE ... COMMIT` (one fsync of the WAL with
synchronous=FULL). State, checkpoints, errors and events are cbor2 bytes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from stageline.core.admission import Claim
from stageline.core.clock import Clock, SystemClock
from stageline.core.codec import DEFAULT_MAX_BYTES, decode, encode
from stageline.core.errors import StoreError
from stageline.core.events import Event, event_from_journal
from stageline.core.mailbox import DONE, FAILED, PENDING, Request
from stageline.core.store import Commit, RunInfo, RunRecord, Waking
from stageline.core.text import unencodable_part

from . import _sqlite_admission as admission
from . import _sqlite_ops as ops
from ._common import (
    RUN_COLUMNS,
    WAKING_WHERE,
    args_fitting,
    commit_refused,
    finished_statuses,
    fitting,
    in_batches,
    request_exists,
    request_not_found,
    run_not_found,
    usage_from_rows,
    waking_from_rows,
)
from ._fleet import SqlFleet
from ._group import GroupCommit
from ._pages import SqlPages
from ._rows import (
    REQUEST_COLUMNS,
    info_from_row,
    listed_info,
    record_from_row,
    request_from_row,
)
from ._schedules import SqlSchedules
from ._sqlite_group import SqliteGroupCommit
from ._sqlite_ops import VACUUM_PAGES
from ._sqlite_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    WAL_AUTOCHECKPOINT_PAGES,
    configure,
    connect,
    migrate,
)
from ._versions import SqliteVersions

T = TypeVar("T")

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "VACUUM_PAGES",
    "WAL_AUTOCHECKPOINT_PAGES",
    "SqliteStore",
]


class SqliteStore(SqliteGroupCommit, SqlFleet, SqlSchedules, SqlPages, SqliteVersions):
    """A Store in one SQLite file.

    `path` is a file path, never a SQLite URI (`file:x.db` is a file of that name). A new
    file is created readable and writable by its owner only (mode 0600): it holds every
    run's state. SQLite gives its -wal and -shm files the same mode. `create=False` opens
    only an existing store: a missing file (or one without stageline's tables) is
    StoreError naming its absolute path, and nothing is created.

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
        create: bool = True,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise StoreError(f"synchronous must be FULL, NORMAL, EXTRA or OFF, got {synchronous!r}")
        self.path = os.fspath(path)
        self.max_state_bytes = max_state_bytes
        self.clock: Clock = SystemClock() if clock is None else clock
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._db = connect(self.path, create=create, timeout=busy_timeout)
            configure(self._db, synchronous.upper())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        self._mailbox_writes = 0  # data_version does not move for this connection's writes
        self._group = GroupCommit(self._write_group)
        with self._transaction(f"migrating the schema of {self.path!r}") as db:
            migrate(db, self.path)

    @contextmanager
    def _transaction(
        self, what: str, refusing: bool = False, journal: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE ... COMMIT` under the store's lock; rolled back on any error.

        `refusing` (commits and new runs): what SQLite refuses for good (a constraint, a
        value it cannot hold) is CommitRefused; anything else (locked, full, read-only)
        is a plain StoreError, which may pass. `journal`: committed, it moves `journal_version`.
        """
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
                self._journal_writes += journal
            except BaseException as exc:
                self._rollback()
                failure = self._failure(what, exc, refusing)
                if failure is None:
                    raise
                raise failure from exc

    def _failure(self, what: str, exc: BaseException, refusing: bool) -> StoreError | None:
        """The StoreError a failed transaction raises (None: raise `exc` as it is)."""
        permanent = (sqlite3.IntegrityError, sqlite3.DataError, OverflowError)
        if refusing and isinstance(exc, permanent):
            return commit_refused(what, repr(self.path), str(exc))
        if isinstance(exc, sqlite3.Error):
            return StoreError(f"{what} failed in {self.path!r}: {exc}")
        if isinstance(exc, UnicodeEncodeError):
            error = _not_text(what, exc)
            return commit_refused(what, repr(self.path), str(error)) if refusing else error
        return None

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

    def load_run(self, run_id: str) -> RunRecord:
        return record_from_row(self._run_row(run_id), self.max_state_bytes)

    def admit(self, commit: Commit, claims: Sequence[Claim], now: float) -> bool:
        data = ops.encoded(commit, self._fits)
        what = f"admitting run {commit.run_id!r}"
        with self._transaction(what, refusing=True, journal=bool(data[1])) as db:
            return admission.admit(db, commit, data, claims, now)

    def queue(self, commit: Commit, claims: Sequence[Claim]) -> None:
        data = ops.encoded(commit, self._fits)
        what = f"queueing run {commit.run_id!r}"
        with self._transaction(what, refusing=True, journal=bool(data[1])) as db:
            admission.queue(db, commit, data, claims)

    def limit_usage(self, now: float) -> list[dict[str, Any]]:
        return usage_from_rows(self._query(admission.USAGE, (now,)))

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
                ops.SET_CHECKPOINT,
                (checkpoint, run_id, int(only_if_paused), expected_version, expected_version),
            )
            if cursor.rowcount == 1:
                return True
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise run_not_found(run_id)
            return False

    def set_trace(self, run_id: str, trace: str) -> None:
        with self._transaction(f"writing the trace of run {run_id!r}") as db:
            if db.execute(ops.SET_TRACE, (trace, run_id)).rowcount != 1:
                raise run_not_found(run_id)

    def claim_run(self, run_id: str, owner: str, lease_until: float, *, now: float) -> bool:
        with self._transaction(f"claiming run {run_id!r}") as db:
            cursor = db.execute(ops.CLAIM_RUN, (owner, lease_until, run_id, now))
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

    def request_abort(self, run_id: str, reason: str | None) -> bool:
        with self._transaction(f"requesting the abort of run {run_id!r}") as db:
            flagged = ops.request_abort(db, run_id, reason)
        if flagged is None:
            raise run_not_found(run_id)
        return flagged

    def abort_requests(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        return self._outside_transaction(
            "reading abort flags", lambda db: ops.abort_requests(db, run_ids)
        )

    def delete_finished(
        self, updated_before: float, statuses: Collection[str], limit: int = 1000
    ) -> int:
        """Delete at most `limit` finished runs (of `statuses`) updated before
        `updated_before`, with their journals, in one transaction; see
        `Store.delete_finished`. The file keeps the space until `reclaim_space`."""
        wanted = finished_statuses(statuses, limit)
        with self._transaction("deleting finished runs") as db:
            return ops.delete_finished(db, updated_before, wanted, limit)

    def reclaim_space(self) -> None:
        """Give the pages of deleted rows back to the file system: the file shrinks.

        A file made by this stageline has `auto_vacuum=INCREMENTAL`: this runs `PRAGMA
        incremental_vacuum`, VACUUM_PAGES pages per transaction (writers wait for one
        chunk at a time, never for the whole), then checkpoints the WAL (TRUNCATE) so the
        file and the WAL shrink on disk. A file made before (auto_vacuum NONE) is switched
        by one full `VACUUM` the first time: it rewrites the whole file, holding the write
        lock meanwhile (seconds for hundreds of MB; other writers wait up to
        `busy_timeout`) and needing free disk for a copy of it; later calls are
        incremental.
        """
        if self._outside_transaction("reading the auto_vacuum mode", ops.auto_vacuum) == 0:
            self._outside_transaction("switching the file to incremental vacuum", ops.vacuum)
        freeing = True
        while freeing:
            freeing = self._outside_transaction("giving free pages back", ops.vacuum_some)
        self._outside_transaction("checkpointing the WAL", ops.checkpoint)

    def _outside_transaction(self, what: str, step: Callable[[sqlite3.Connection], T]) -> T:
        """`step(connection)` under the store's lock, in SQLite's own autocommit."""
        with self._lock:
            if self._closed:
                raise StoreError(f"SQLite store {self.path!r} is closed")
            try:
                return step(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"{what} failed in {self.path!r}: {exc}") from exc

    def get_run(self, run_id: str) -> RunInfo:
        return info_from_row(self._run_row(run_id), self.max_state_bytes)

    def _run_row(self, run_id: str) -> tuple[Any, ...]:
        rows = self._query(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise run_not_found(run_id)
        return rows[0]

    def list_runs(self, status: str | None = None, pipeline_id: str | None = None) -> list[RunInfo]:
        rows = self._query(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR status = ?1) "
            "AND (?2 IS NULL OR pipeline_id = ?2) ORDER BY created_at, run_id",
            (status, pipeline_id),
        )
        return [listed_info(row, self.max_state_bytes) for row in rows]

    def list_waking(
        self, pipeline_id: str | None = None, until: float | None = None, limit: int = 100_000
    ) -> list[Waking]:
        rows = self._query(
            "SELECT run_id, pipeline_id, status, wake_at FROM runs WHERE "
            + WAKING_WHERE.format(mark="?"),
            (pipeline_id, pipeline_id, until, until, limit),
        )
        return waking_from_rows(rows)

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
        args = args_fitting(request, encode(request.args), self.max_state_bytes)
        with self._transaction(f"posting request {request.request_id!r}") as db:
            try:
                r = request
                row = (r.request_id, r.kind, r.run_id, r.posted_at, r.pipeline_id, args, PENDING)
                db.execute(
                    f"INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (*row, None, None, None),
                )
            except sqlite3.IntegrityError:
                raise request_exists(request.request_id) from None
            self._mailbox_writes += 1

    def claim_requests(self, claimer: str, limit: int = 16) -> list[Request]:
        """Claim up to `limit` pending requests, oldest first. A request that cannot be
        read is answered "failed" (saying so) in the same transaction, and left out; a
        batch of only such requests is followed by another claim."""
        while True:
            now = self.clock.wall()
            with self._transaction("claiming mailbox requests") as db:
                claimed, answered = ops.claim_requests(
                    db, claimer, limit, self.max_state_bytes, now
                )
                self._mailbox_writes += answered
            if claimed or not answered:
                return claimed

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
        return request_from_row(rows[0], self.max_state_bytes)

    def prune_requests(self, answered_before: float) -> int:
        def delete_batch(limit: int) -> int:
            with self._transaction("pruning answered requests") as db:
                params = (DONE, FAILED, answered_before, limit)
                return int(db.execute(ops.PRUNE, params).rowcount)

        return in_batches(delete_batch)

    def _fleet_rows(self, what: str, statement: str, params: tuple[Any, ...]) -> list[Any]:
        statement = statement.replace("{s}.", "")
        if statement.startswith("SELECT"):  # a read takes no write lock
            return self._query(statement, params)
        with self._transaction(what) as db:
            return db.execute(statement, params).fetchall()

    def _fleet_answered(self) -> None:
        self._mailbox_writes += 1

    TEXT_TIMES = True  # a hand-edited row may hold text in created_at: it is listed all the same

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _not_text(what: str, exc: UnicodeEncodeError) -> StoreError:
    """A str with lone surrogates (bytes that were not UTF-8, e.g. from a shell argument)."""
    bad = unencodable_part(exc)
    return StoreError(
        f"{what} failed: a run id, pipeline id or other text holds {bad}, which is not "
        "valid Unicode (it came from bytes that are not UTF-8); use valid UTF-8 text"
    )
