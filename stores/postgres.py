"""PostgresStore: runs shared by many processes and machines through one PostgreSQL database.

psycopg 3 with a psycopg_pool.ConnectionPool (the `postgres` extra). Connections run in
autocommit mode: a read is one statement, and a stage commit is one statement too: a
data-modifying CTE that updates the run row with compare-and-set on `version` and inserts
the stage's journal events only if that update matched, so both land in one transaction
and one round trip. State, checkpoints, errors and events are cbor2 `bytea`.

The tables live in their own schema (`schema="stageline"` by default). The store creates
them and migrates them on open, under `pg_advisory_xact_lock`, so processes starting at
once do not race; the version is kept in the schema's `stageline_meta` table, and a
database written by a newer stageline is refused rather than misread.

The store is composed of private parts, one job each: `_pg_driver` (importing psycopg,
reading the dsn), `_pg_pool` (connections), `_pg_schema` (tables and migrations),
`_pg_sql` (statement text), `_pg_text` (what PostgreSQL text can hold), `_pg_mailbox` and
`_pg_listener` (requests and their NOTIFYs). This module keeps the runs and journals.

Decisions where the spec is silent:

- PostgreSQL `text` cannot hold NUL characters: a run id (or pipeline id, stage id) with
  one is refused with StoreError on write (CommitRefused for a commit or a new run: it
  would be refused again); a lookup by such an id finds nothing (RunNotFound), as no such
  run can exist. A commit or new run the server refuses for good (SQLSTATE class 22, a
  data exception; class 23, a constraint) is CommitRefused too; a lost connection or a
  timeout stays a plain StoreError.
- Run and pipeline ids are index keys, which PostgreSQL limits in size: ids over
  `MAX_ID_BYTES` (UTF-8) are refused with StoreError on write.
- A connection lost before or while a commit runs raises StoreError; the broken
  connection is dropped from the pool and the next call gets a new one. If it was lost
  while the server was committing, the outcome is unknown: the run's version tells, and
  a writer that guessed wrong gets ConflictError at its next commit.
- Connections are named `stageline` (`application_name`, seen in `pg_stat_activity`)
  unless the dsn names them.
- A pooled connection idle for more than `check_after` seconds (default 2) is tested
  before use (one empty round trip), so one the server closed while idle (a restart, an
  idle timeout in a proxy) is replaced instead of failing the next call. Busy connections
  are not tested: a test on every call costs about a third of a stage commit.
- `list_runs` orders by creation time, then run id in byte order (`COLLATE "C"`), as
  SQLite does.
- Leases: `claim_run` locks the run's row with `FOR UPDATE SKIP LOCKED`, so a claim on a
  row another transaction holds (its owner committing a stage, another claimer) returns
  False at once instead of waiting.
- Mailbox: claims take the oldest pending requests with `FOR UPDATE SKIP LOCKED`; posting
  and answering send a NOTIFY on the schema's channel in the same statement. The store
  LISTENs on one extra connection (opened on first use): `mailbox_version()` counts the
  notifications without a round trip, `wait_for_requests(timeout)` blocks on them. An
  answer's NUL characters are written as the two characters `\\0`.
- Journals: a commit that appends journal events NOTIFYs the schema's journal channel
  (payload: the run id) in the same statement. `journal_version()` counts those NOTIFYs
  on a LISTEN connection of its own (opened on first use) plus this store's own such
  commits; `wait_journal` blocks on it (stores/_versions.py says why not the mailbox's).
- Pages of runs (`page_runs`): keyset over the `(created_at, run_id COLLATE "C")` indexes
  of schema migration 9 (stores/_pages.py).
- Group commit: stage commits of different runs arriving together share one transaction
  (stores/_pg_group.py); a lone commit is still one autocommit statement.
- Admission (`admit`, `queue`, `limit_usage`): see stores/_pg_admission.py; `admit`
  takes an advisory lock per claimed (limit, key) in its transaction before counting.
- Time: an answered request's time is the store's `clock.wall()` (`clock=`, default the
  system clock); the pool's and the listener's timers use the process's monotonic time.
- Abort flags: `request_abort` sets the flag and NOTIFYs the mailbox channel in one
  statement, so a daemon in `wait_for_requests` wakes (even with `answers=False`).
- Retention: `delete_finished` is one statement (runs locked `FOR UPDATE SKIP LOCKED`;
  journal, admission claims and runs deleted together); `reclaim_space` runs a plain
  VACUUM (see there).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Any

from stageline.core import lifecycle
from stageline.core.admission import Claim
from stageline.core.clock import Clock, SystemClock
from stageline.core.codec import DEFAULT_MAX_BYTES, decode, encode, encode_trusted
from stageline.core.events import Event, event_from_journal, is_journaled, journal_record
from stageline.core.mailbox import Request
from stageline.core.store import Commit, RunInfo, RunRecord, Waking

from . import _pg_admission as admission
from . import _pg_sql as sql
from ._common import (
    conflict,
    finished_statuses,
    fitting,
    maybe_encode,
    run_exists,
    run_not_found,
    run_values,
    usage_from_rows,
    waking_from_rows,
)
from ._fleet import SqlFleet
from ._group import GroupCommit
from ._pages import SqlPages
from ._pg_driver import schema_from_url as _schema_from_url  # noqa: F401 (its old home)
from ._pg_group import PgGroupCommit
from ._pg_listener import Listener
from ._pg_mailbox import Mailbox
from ._pg_pool import Connections, PoolLimits
from ._pg_schema import MIGRATIONS, SCHEMA_VERSION, migrate
from ._pg_text import MAX_ID_BYTES, check_id, check_text, unstorable
from ._rows import info_from_row, listed_info, record_from_row
from ._schedules import SqlSchedules
from ._versions import PgJournalVersion

__all__ = ["MAX_ID_BYTES", "MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]


class PostgresStore(PgGroupCommit, SqlFleet, SqlSchedules, SqlPages, PgJournalVersion):
    """A Store in a PostgreSQL database, shared by any number of processes.

    `dsn` is a libpq connection string or URL (`postgresql://user@host:5432/db`).
    `schema` is the PostgreSQL schema holding stageline's tables (created if absent):
    "stageline" unless given here or as the URL's `schema` parameter
    (`postgresql://host/db?schema=shop`, so a store URL alone can name it).
    `min_size` / `max_size` bound the connection pool: a stage commit holds a connection
    for one round trip, so a few connections serve many concurrent runs.
    `pool_timeout` is how long a call waits for a free connection (or for the server to
    come back) before failing with StoreError; `connect_timeout` bounds opening one.
    `check_after`: a connection idle longer than this many seconds is tested before use
    (0: always; None: never, and a connection the server dropped fails one call).
    `clock` (default: the system clock) dates the answers to mailbox requests.
    `create=False` opens only an existing store: a schema without stageline's tables is
    StoreError naming it, and nothing is created.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        pool_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        check_after: float | None = 2.0,
        max_state_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
        create: bool = True,
    ) -> None:
        self.max_state_bytes = max_state_bytes
        self.clock: Clock = SystemClock() if clock is None else clock
        limits = PoolLimits(min_size, max_size, pool_timeout, connect_timeout, check_after)
        self._db = Connections(dsn, schema, limits)
        self.schema = self._db.schema
        self.channel = "stageline_mailbox_" + hashlib.sha1(self.schema.encode()).hexdigest()[:16]
        self._where = self._db.where
        self._db.open(lambda conn: migrate(conn, self._db.sql, self.schema, self._where, create))
        self._listener = Listener(self._db.driver, self._db.connect, self.channel)
        self._mailbox = Mailbox(self._db, self._listener, self.channel, max_state_bytes)
        self._listen_for_journals()
        self._group = GroupCommit(self._write_group)

    # ----------------------------------------------------------------- writes

    def create_run(self, record: RunRecord) -> None:
        check_id(record.run_id, "run id", refusing=True)
        check_id(record.pipeline_id, "pipeline id", refusing=True)
        check_text(record.stage, "stage id", record.run_id, refusing=True)
        check_text(record.status, "status", record.run_id, refusing=True)
        values = run_values(record, self._fits(record.run_id, "state", encode(record.state)))
        with self._db.connection(f"creating run {record.run_id!r}", refusing=True) as conn:
            cursor = conn.execute(self._db.sql(sql.INSERT_RUN), values)
            if cursor.rowcount != 1:
                raise run_exists(record.run_id)

    def commit(self, commit: Commit) -> int:
        """Write the stage commit, with those of other runs arriving at the same moment
        in one transaction (stores/_pg_group.py); returns once it is durable."""
        statement = self._checked_statement(commit)
        version = int(self._group.submit((commit, statement)))
        self._journal_written(statement)
        return version

    def admit(self, commit: Commit, claims: Sequence[Claim], now: float) -> bool:
        statement = self._checked_statement(commit)
        with self._db.connection(f"admitting run {commit.run_id!r}", refusing=True) as conn:
            admitted = admission.admit(
                conn, self._db.sql, commit, statement, claims, now, self.schema
            )
        if admitted:
            self._journal_written(statement)
        return admitted

    def queue(self, commit: Commit, claims: Sequence[Claim]) -> None:
        statement = self._checked_statement(commit)
        with self._db.connection(f"queueing run {commit.run_id!r}", refusing=True) as conn:
            admission.queue(conn, self._db.sql, commit, statement, claims)
        self._journal_written(statement)

    def limit_usage(self, now: float) -> list[dict[str, Any]]:
        return usage_from_rows(self._db.query("reading the limits' usage", admission.USAGE, (now,)))

    def _checked_statement(self, commit: Commit) -> tuple[str, tuple[Any, ...]]:
        """The commit's statement and parameters; CommitRefused for text PostgreSQL cannot
        hold, ConflictError for a run id no stored run can have."""
        for value, what in ((commit.stage, "stage id"), (commit.status, "status")):
            check_text(value, what, commit.run_id, refusing=True)
        check_text(commit.owner, "owner", commit.run_id, refusing=True)
        statement = self._commit_statement(commit)
        if unstorable(commit.run_id):
            raise conflict(commit.run_id, commit.expected_version, None)
        return statement

    def _commit_statement(self, commit: Commit) -> tuple[str, tuple[Any, ...]]:
        """The commit's statement (with its journal events, if any) and its parameters."""
        values: tuple[Any, ...] = (
            commit.status,
            commit.stage,
            self._fits(commit.run_id, "state", encode_trusted(commit.state)),
            commit.checkpoint,
            maybe_encode(commit.error),
            commit.last_seq,
            commit.stage_runs,
            commit.updated_at,
            commit.wake_at,
            commit.owner,
            commit.owner,
            commit.lease_until,
            commit.status in lifecycle.ACTIVE,  # keep the abort flag
            commit.status in lifecycle.ACTIVE,
            commit.run_id,
            commit.expected_version,
        )
        journaled = [e for e in commit.events if is_journaled(e.name)]
        if not journaled:
            return sql.COMMIT, values
        leaves = commit.status not in (lifecycle.RUNNING, lifecycle.QUEUED)
        arrays = self._journal_arrays(commit, journaled)
        notify = (self.journal_channel, commit.run_id)
        return sql.COMMIT_WITH_EVENTS, (*values, *arrays, commit.run_id, leaves, *notify)

    def _journal_arrays(self, commit: Commit, journaled: list[Event]) -> tuple[Any, ...]:
        """The run id and the events' seqs, names and records, as `unnest` takes them."""
        records = [
            self._fits(commit.run_id, e.name, encode_trusted(journal_record(e))) for e in journaled
        ]
        return commit.run_id, [e.seq for e in journaled], [e.name for e in journaled], records

    def _fits(self, run_id: str, what: str, data: bytes) -> bytes:
        return fitting(run_id, what, data, self.max_state_bytes)

    def set_checkpoint(
        self,
        run_id: str,
        checkpoint: bytes | None,
        *,
        only_if_paused: bool = True,
        expected_version: int | None = None,
    ) -> bool:
        params = (checkpoint, run_id, only_if_paused, expected_version, expected_version)
        return self._update_run(
            f"writing the checkpoint of run {run_id!r}", run_id, sql.SET_CHECKPOINT, params
        )

    def set_trace(self, run_id: str, trace: str) -> None:
        what = f"writing the trace of run {run_id!r}"
        self._update_run(what, run_id, sql.SET_TRACE, (trace, run_id))

    def _update_run(self, what: str, run_id: str, statement: str, params: tuple[Any, ...]) -> bool:
        """Run an UPDATE of run `run_id`: True if it changed the row, False if the run is
        there but the update's condition did not hold, RunNotFound if it is not there."""
        if unstorable(run_id):
            raise run_not_found(run_id)
        with self._db.connection(what) as conn:
            if conn.execute(self._db.sql(statement), params).rowcount == 1:
                return True
            exists = conn.execute(self._db.sql(sql.RUN_EXISTS), (run_id,)).fetchone()
        if exists is None:
            raise run_not_found(run_id)
        return False

    # ----------------------------------------------------------------- leases

    def claim_run(self, run_id: str, owner: str, lease_until: float, *, now: float) -> bool:
        check_text(owner, "owner", run_id)
        params = (owner, lease_until, run_id, owner, now)
        return self._update_run(f"claiming run {run_id!r}", run_id, sql.CLAIM_RUN, params)

    def renew_leases(self, owner: str, run_ids: Sequence[str], lease_until: float) -> list[str]:
        check_text(owner, "owner", owner)
        wanted = [run_id for run_id in run_ids if not unstorable(run_id)]
        if not wanted:
            return []
        rows = self._db.query(
            f"renewing the leases of {owner!r}", sql.RENEW_LEASES, (lease_until, owner, wanted)
        )
        renewed = {row[0] for row in rows}
        return [run_id for run_id in wanted if run_id in renewed]

    # ----------------------------------------------------------------- abort flags

    def request_abort(self, run_id: str, reason: str | None) -> bool:
        """Set the run's abort flag if it is pending or running, and NOTIFY the mailbox
        channel in the same statement; see `Store.request_abort`. A reason's NUL
        characters are written as the two characters `\\0`."""
        text = None if reason is None else reason.replace("\x00", "\\0")
        check_text(text, "abort reason", run_id)
        params = (text, run_id, self.channel)
        if self._update_run(
            f"requesting the abort of run {run_id!r}", run_id, sql.REQUEST_ABORT, params
        ):
            self._listener.own_write()
            return True
        return False

    def abort_requests(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        wanted = [run_id for run_id in run_ids if not unstorable(run_id)]
        if not wanted:
            return {}
        rows = self._db.query("reading abort flags", sql.ABORT_REQUESTS, (wanted,))
        return {run_id: reason for run_id, reason in rows}

    # ----------------------------------------------------------------- retention

    def delete_finished(
        self, updated_before: float, statuses: Collection[str], limit: int = 1000
    ) -> int:
        """Delete at most `limit` finished runs (of `statuses`) updated before
        `updated_before`, with their journals, in one statement; see
        `Store.delete_finished`. A run whose row another transaction holds at that
        moment (a retry committing) is skipped, not waited for."""
        wanted = list(finished_statuses(statuses, limit))
        if not wanted:
            return 0
        params = (wanted, updated_before, limit)
        rows = self._db.query("deleting finished runs", sql.DELETE_FINISHED, params)
        return int(rows[0][0])

    def reclaim_space(self) -> None:
        """Make the space of deleted rows reusable now: a plain `VACUUM` of the runs,
        journal and mailbox tables (never VACUUM FULL: it takes no lock that stops reads
        or writes). The files do not shrink; new rows reuse the space, so the tables stop
        growing. Autovacuum does the same on its own schedule, so skipping this loses
        nothing. A role that does not own the tables only gets a server warning."""
        with self._db.connection("vacuuming the tables") as conn:
            for table in ("runs", "events", "requests"):
                conn.execute(self._db.sql(f"VACUUM {{s}}.{table}"))

    # ----------------------------------------------------------------- reads

    def load_run(self, run_id: str) -> RunRecord:
        return record_from_row(self._run_row(run_id), self.max_state_bytes)

    def get_run(self, run_id: str) -> RunInfo:
        return info_from_row(self._run_row(run_id), self.max_state_bytes)

    def _run_row(self, run_id: str) -> tuple[Any, ...]:
        if unstorable(run_id):
            raise run_not_found(run_id)
        rows = self._db.query(f"reading run {run_id!r}", sql.LOAD_RUN, (run_id,))
        if not rows:
            raise run_not_found(run_id)
        return rows[0]

    def list_runs(self, status: str | None = None, pipeline_id: str | None = None) -> list[RunInfo]:
        if unstorable(status) or unstorable(pipeline_id):
            return []
        params = (status, status, pipeline_id, pipeline_id)
        rows = self._db.query("listing runs", sql.LIST_RUNS, params)
        return [listed_info(row, self.max_state_bytes) for row in rows]

    def list_waking(
        self, pipeline_id: str | None = None, until: float | None = None, limit: int = 100_000
    ) -> list[Waking]:
        if unstorable(pipeline_id):
            return []
        params = (pipeline_id, pipeline_id, until, until, limit)
        rows = self._db.query("listing the runs to wake", sql.LIST_WAKING, params)
        return waking_from_rows(rows)

    def read_events(self, run_id: str, after_seq: int = 0) -> list[Event]:
        if unstorable(run_id):
            raise run_not_found(run_id)
        rows = self._db.query(
            f"reading the journal of run {run_id!r}", sql.READ_EVENTS, (after_seq, run_id)
        )
        if not rows:
            raise run_not_found(run_id)
        return [
            event_from_journal(
                decode(data, max_bytes=self.max_state_bytes, what="journal event", patches=True),
                name,
                run_id,
                pipeline_id,
            )
            for pipeline_id, name, data in rows
            if name is not None
        ]

    # ----------------------------------------------------------------- mailbox

    def post_request(self, request: Request) -> None:
        self._mailbox.post(request)

    def claim_requests(self, claimer: str, limit: int = 16) -> list[Request]:
        return self._mailbox.claim(claimer, limit, self.clock.wall())

    def answer_request(self, request_id: str, error: str | None = None) -> None:
        self._mailbox.answer(request_id, error, self.clock.wall())

    def prune_requests(self, answered_before: float) -> int:
        return self._mailbox.prune(answered_before)

    def get_request(self, request_id: str) -> Request:
        return self._mailbox.get(request_id)

    def mailbox_version(self) -> int:
        """A number that moves when a request is posted or answered, by any process.

        No round trip: it counts this store's own posts and answers, plus the NOTIFYs
        that arrived on its LISTEN connection (opened by the first call). Polling it is
        as cheap as reading a socket that has nothing to say.
        """
        return self._mailbox.version()

    def wait_for_requests(self, timeout: float, *, answers: bool = True) -> bool:
        """Block until the mailbox changes (a NOTIFY from any process) or `timeout` passes.

        True if it changed, or may have (the first call, which starts listening, and a
        reconnection both return True at once: claim, then wait again); False on timeout.
        `answers=False`: only a posted request wakes it, not an answer (a daemon has no use
        for answers, and with many daemons every answer would wake every one of them).
        A daemon loop: `while not stopping: store.wait_for_requests(1.0); claim...`.
        """
        return self._mailbox.wait(timeout, answers=answers)

    def _fleet_rows(self, what: str, statement: str, params: tuple[Any, ...]) -> list[Any]:
        return self._db.query(what, statement.replace("?", "%s"), params)

    RUN_ID_ORDER = 'run_id COLLATE "C"'  # pages order run ids in byte order, as list_runs

    def _never_stored(self, text: str | None) -> bool:
        return unstorable(text)

    def _fleet_answered(self) -> None:
        notify = f"SELECT pg_notify(%s, '{sql.ANSWERED}')"
        self._db.query("announcing an answer", notify, (self.channel,))
        self._listener.own_write()

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close the pool's connections and the listener; later calls raise StoreError."""
        if not self._db.closed:
            self._db.close()
            self._listener.close()
            self._journal_listener.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self._where})"
