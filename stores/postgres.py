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

Decisions where the spec is silent:

- PostgreSQL `text` cannot hold NUL characters: a run id (or pipeline id, stage id) with
  one is refused with StoreError on write; a lookup by such an id finds nothing
  (RunNotFound), as no such run can exist.
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
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Final

from stageline.core.codec import DEFAULT_MAX_BYTES, decode, encode, encode_trusted
from stageline.core.errors import StoreError
from stageline.core.events import Event, event_from_journal, is_journaled, journal_record
from stageline.core.mailbox import CLAIMED, DONE, FAILED, PENDING, Request
from stageline.core.store import Commit, RunInfo, RunRecord
from stageline.core.text import is_utf8

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

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    _Connection = psycopg.Connection[tuple[Any, ...]]

SCHEMA_VERSION: Final = 3
MAX_ID_BYTES: Final = 2048  # btree entries are limited to about 2.7 kB
_POSTED: Final = "posted"  # the NOTIFY payload of a posted request (answers: "answered")

# MIGRATIONS[n] takes a schema from version n - 1 to n. `{s}` is the schema. The same
# steps as SQLite's: 1 runs and journal, 2 leases (`owner`, `lease_until`), 3 the mailbox.
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
        "CREATE INDEX requests_pending ON {s}.requests (seq) WHERE status = 'pending'",
    ),
}

# A commit with an owner also takes the run's lease; without one the lease is kept.
_UPDATE: Final = (
    "UPDATE {s}.runs SET status = %s, stage = %s, state = %s, checkpoint = %s, error = %s, "
    "version = version + 1, last_seq = %s, stage_runs = %s, updated_at = %s, "
    "owner = COALESCE(%s, owner), "
    "lease_until = CASE WHEN %s::text IS NULL THEN lease_until ELSE %s::float8 END "
    "WHERE run_id = %s AND version = %s"
)
# A claim skips a row another transaction holds (its owner committing, or another
# claimer): that run is not orphaned, or someone else is taking it.
_CLAIM: Final = (
    "UPDATE {s}.runs SET owner = %s, lease_until = %s WHERE run_id = ("
    "SELECT run_id FROM {s}.runs WHERE run_id = %s AND status IN ('running', 'pending') "
    "AND (owner IS NULL OR owner = %s OR lease_until IS NULL OR lease_until <= %s) "
    "FOR UPDATE SKIP LOCKED)"
)
_COMMIT: Final = _UPDATE + " RETURNING version"
_COMMIT_WITH_EVENTS: Final = (
    "WITH updated AS (" + _UPDATE + " RETURNING version), "
    "journal AS (INSERT INTO {s}.events (run_id, seq, name, data) "
    "SELECT %s, e.seq, e.name, e.data "
    "FROM unnest(%s::bigint[], %s::text[], %s::bytea[]) AS e(seq, name, data) "
    "WHERE EXISTS (SELECT 1 FROM updated)) "
    "SELECT version FROM updated"
)


class PostgresStore:
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
    ) -> None:
        self.max_state_bytes = max_state_bytes
        psycopg, pool_module = _import_driver()
        dsn, schema = _schema_from_url(dsn, schema)
        if not schema or "\x00" in schema:
            raise StoreError(f"schema must be a non-empty name without NUL, got {schema!r}")
        if min_size < 0 or max_size < max(min_size, 1):
            raise StoreError(
                f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1, "
                f"got min_size={min_size}, max_size={max_size}"
            )
        self._psycopg = psycopg
        self.schema = schema
        self.channel = "stageline_mailbox_" + hashlib.sha1(schema.encode()).hexdigest()[:16]
        self._where = _describe(psycopg, dsn, schema)
        self._closed = False
        self._check_after = check_after
        self._last_used: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        quoted = psycopg.sql.Identifier(schema).as_string(None)
        self._sql: Callable[[str], str] = lambda text: text.replace("{s}", quoted)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout)),
        }
        if "application_name" not in _params(psycopg, dsn):
            kwargs["application_name"] = "stageline"
        try:
            with psycopg.connect(dsn, **kwargs) as conn:
                self._migrate(conn)
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) == "42501":  # insufficient_privilege
                hint = (
                    "this role may not create or upgrade the schema: open the store once as "
                    "a role that may (e.g. the schema's owner), then grant this one USAGE on "
                    "the schema and SELECT, INSERT, UPDATE on its tables"
                )
            else:
                hint = "check the dsn and that the server is running"
            raise StoreError(
                f"cannot open the PostgreSQL store {self._where}: {_reason(exc)}; {hint}"
            ) from exc
        self._pool: ConnectionPool[_Connection] = pool_module.ConnectionPool(
            dsn,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=pool_timeout,
            check=None if check_after is None else self._check_if_idle,
            name=f"stageline:{schema}",
        )
        try:
            self._pool.open(wait=min_size > 0, timeout=max(connect_timeout, 1.0))
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(
                f"cannot open connections to the PostgreSQL store {self._where}: "
                f"{_reason(exc)}; check the dsn and the server's max_connections"
            ) from exc
        self._listener = _Listener(psycopg, lambda: psycopg.connect(dsn, **kwargs), self.channel)

    # ----------------------------------------------------------------- schema

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the tables, one process at a time (advisory lock).

        A schema already at this version is only read: no DDL, no lock, and no CREATE
        privilege needed, so a DBA may create the schema and run the first migration.
        """
        if self._schema_version(conn) == SCHEMA_VERSION:
            return
        with conn.transaction():
            lock_name = f"stageline:{self.schema}"
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_name,))
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone()
            if exists is None:
                conn.execute(self._sql("CREATE SCHEMA {s}"))
            conn.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {s}.stageline_meta "
                    "(key text PRIMARY KEY, value text NOT NULL)"
                )
            )
            found = self._schema_version(conn)
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    conn.execute(self._sql(statement))
            if found < SCHEMA_VERSION:
                conn.execute(
                    self._sql(
                        "INSERT INTO {s}.stageline_meta VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                    ),
                    (str(SCHEMA_VERSION),),
                )

    def _schema_version(self, conn: psycopg.Connection[Any]) -> int:
        """The version stored in the schema (0: none yet); StoreError if it is too new."""
        meta = self._sql("{s}.stageline_meta")
        if conn.execute("SELECT to_regclass(%s)", (meta,)).fetchone() in (None, (None,)):
            return 0
        row = conn.execute(
            self._sql("SELECT value FROM {s}.stageline_meta WHERE key = 'schema_version'")
        ).fetchone()
        found = 0 if row is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the PostgreSQL store {self._where} has schema version {found}, newer "
                f"than this stageline understands ({SCHEMA_VERSION}); upgrade stageline"
            )
        return found

    # ----------------------------------------------------------------- plumbing

    @contextmanager
    def _connection(self, what: str) -> Iterator[_Connection]:
        """A pooled connection; driver errors become StoreError naming `what`."""
        self._fail_if_closed()
        try:
            with self._pool.connection() as conn:
                try:
                    yield conn
                finally:
                    self._last_used[conn] = time.monotonic()
        except self._psycopg.Error as exc:
            raise self._failure(what, exc) from exc

    def _check_if_idle(self, conn: _Connection) -> None:
        """The pool's check: test a connection that has been idle for a while."""
        idle = time.monotonic() - self._last_used.get(conn, 0.0)
        if self._check_after is not None and idle > self._check_after:
            conn.execute("")

    def _failure(self, what: str, exc: BaseException) -> StoreError:
        psycopg = self._psycopg
        if isinstance(exc, psycopg.OperationalError):
            if exc.__class__.__name__ == "PoolTimeout":
                hint = "no connection was free or the server did not answer in time"
            else:
                hint = "the connection to the server failed or was lost"
            return StoreError(
                f"{what} failed in the PostgreSQL store {self._where}: {hint} "
                f"({_reason(exc)}); nothing already committed is lost: retry once the "
                "server is reachable (a run stays at its last commit and can be resumed)"
            )
        return StoreError(f"{what} failed in the PostgreSQL store {self._where}: {_reason(exc)}")

    def _query(self, what: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._connection(what) as conn:
            return conn.execute(self._sql(sql), params).fetchall()

    # ----------------------------------------------------------------- writes

    def create_run(self, record: RunRecord) -> None:
        _check_id(record.run_id, "run id")
        _check_id(record.pipeline_id, "pipeline id")
        _check_text(record.stage, "stage id", record.run_id)
        _check_text(record.status, "status", record.run_id)
        values = (
            record.run_id,
            record.pipeline_id,
            record.pipeline_version,
            record.status,
            record.stage,
            fitting(record.run_id, "state", encode(record.state), self.max_state_bytes),
            record.checkpoint,
            maybe_encode(record.error),
            record.version,
            record.last_seq,
            record.stage_runs,
            record.created_at,
            record.updated_at,
            record.owner,
            record.lease_until,
        )
        with self._connection(f"creating run {record.run_id!r}") as conn:
            cursor = conn.execute(
                self._sql(
                    f"INSERT INTO {{s}}.runs ({RUN_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (run_id) DO NOTHING"
                ),
                values,
            )
            if cursor.rowcount != 1:
                raise run_exists(record.run_id)

    def commit(self, commit: Commit) -> int:
        _check_text(commit.stage, "stage id", commit.run_id)
        _check_text(commit.status, "status", commit.run_id)
        _check_text(commit.owner, "owner", commit.run_id)
        journaled = [e for e in commit.events if is_journaled(e.name)]
        values: tuple[Any, ...] = (
            commit.status,
            commit.stage,
            fitting(commit.run_id, "state", encode_trusted(commit.state), self.max_state_bytes),
            commit.checkpoint,
            maybe_encode(commit.error),
            commit.last_seq,
            commit.stage_runs,
            commit.updated_at,
            commit.owner,
            commit.owner,
            commit.lease_until,
            commit.run_id,
            commit.expected_version,
        )
        if journaled:
            sql = _COMMIT_WITH_EVENTS
            values += (
                commit.run_id,
                [e.seq for e in journaled],
                [e.name for e in journaled],
                [
                    fitting(
                        commit.run_id,
                        e.name,
                        encode_trusted(journal_record(e)),
                        self.max_state_bytes,
                    )
                    for e in journaled
                ],
            )
        else:
            sql = _COMMIT
        if _unstorable(commit.run_id):
            raise conflict(commit.run_id, commit.expected_version, None)
        with self._connection(f"committing run {commit.run_id!r}") as conn:
            row = conn.execute(self._sql(sql), values).fetchone()
            if row is None:
                found = conn.execute(
                    self._sql("SELECT version FROM {s}.runs WHERE run_id = %s"), (commit.run_id,)
                ).fetchone()
                raise conflict(
                    commit.run_id, commit.expected_version, None if found is None else found[0]
                )
        return int(row[0])

    def set_checkpoint(
        self,
        run_id: str,
        checkpoint: bytes | None,
        *,
        only_if_paused: bool = True,
        expected_version: int | None = None,
    ) -> bool:
        if _unstorable(run_id):
            raise run_not_found(run_id)
        with self._connection(f"writing the checkpoint of run {run_id!r}") as conn:
            cursor = conn.execute(
                self._sql(
                    "UPDATE {s}.runs SET checkpoint = %s WHERE run_id = %s "
                    "AND (NOT %s OR status = 'paused') AND (%s::bigint IS NULL OR version = %s)"
                ),
                (checkpoint, run_id, only_if_paused, expected_version, expected_version),
            )
            if cursor.rowcount == 1:
                return True
            exists = conn.execute(
                self._sql("SELECT 1 FROM {s}.runs WHERE run_id = %s"), (run_id,)
            ).fetchone()
        if exists is None:
            raise run_not_found(run_id)
        return False

    # ----------------------------------------------------------------- leases

    def claim_run(self, run_id: str, owner: str, lease_until: float, *, now: float) -> bool:
        _check_text(owner, "owner", run_id)
        if _unstorable(run_id):
            raise run_not_found(run_id)
        with self._connection(f"claiming run {run_id!r}") as conn:
            cursor = conn.execute(self._sql(_CLAIM), (owner, lease_until, run_id, owner, now))
            if cursor.rowcount == 1:
                return True
            exists = conn.execute(
                self._sql("SELECT 1 FROM {s}.runs WHERE run_id = %s"), (run_id,)
            ).fetchone()
        if exists is None:
            raise run_not_found(run_id)
        return False

    def renew_leases(self, owner: str, run_ids: Sequence[str], lease_until: float) -> list[str]:
        _check_text(owner, "owner", owner)
        wanted = [run_id for run_id in run_ids if not _unstorable(run_id)]
        if not wanted:
            return []
        rows = self._query(
            f"renewing the leases of {owner!r}",
            "UPDATE {s}.runs SET lease_until = %s WHERE owner = %s AND run_id = ANY(%s) "
            "RETURNING run_id",
            (lease_until, owner, wanted),
        )
        renewed = {row[0] for row in rows}
        return [run_id for run_id in wanted if run_id in renewed]

    # ----------------------------------------------------------------- reads

    def load_run(self, run_id: str) -> RunRecord:
        if _unstorable(run_id):
            raise run_not_found(run_id)
        rows = self._query(
            f"reading run {run_id!r}",
            f"SELECT {RUN_COLUMNS} FROM {{s}}.runs WHERE run_id = %s",
            (run_id,),
        )
        if not rows:
            raise run_not_found(run_id)
        return record_from_row(rows[0], self.max_state_bytes)

    def get_run(self, run_id: str) -> RunInfo:
        return self.load_run(run_id).info()

    def list_runs(self, status: str | None = None, pipeline_id: str | None = None) -> list[RunInfo]:
        if _unstorable(status) or _unstorable(pipeline_id):
            return []
        rows = self._query(
            "listing runs",
            f"SELECT {RUN_COLUMNS} FROM {{s}}.runs "
            "WHERE (%s::text IS NULL OR status = %s) AND (%s::text IS NULL OR pipeline_id = %s) "
            'ORDER BY created_at, run_id COLLATE "C"',
            (status, status, pipeline_id, pipeline_id),
        )
        return [record_from_row(row, self.max_state_bytes).info() for row in rows]

    def read_events(self, run_id: str, after_seq: int = 0) -> list[Event]:
        if _unstorable(run_id):
            raise run_not_found(run_id)
        rows = self._query(
            f"reading the journal of run {run_id!r}",
            "SELECT r.pipeline_id, e.name, e.data FROM {s}.runs r "
            "LEFT JOIN {s}.events e ON e.run_id = r.run_id AND e.seq > %s "
            "WHERE r.run_id = %s ORDER BY e.seq",
            (after_seq, run_id),
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
        for value, what in ((request.request_id, "request id"), (request.run_id, "run id")):
            _check_id(value, what)
        _check_text(request.pipeline_id, "pipeline id", request.run_id)
        values = (
            request.request_id,
            request.kind,
            request.run_id,
            request.posted_at,
            request.pipeline_id,
            encode(request.args),
            PENDING,
            self.channel,
        )
        with self._connection(f"posting request {request.request_id!r}") as conn:
            posted = conn.execute(
                self._sql(
                    "WITH posted AS (INSERT INTO {s}.requests "
                    "(request_id, kind, run_id, posted_at, pipeline_id, args, status) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (request_id) DO NOTHING RETURNING 1) "
                    f"SELECT pg_notify(%s, '{_POSTED}') FROM posted"
                ),
                values,
            ).fetchone()
        if posted is None:
            raise request_exists(request.request_id)
        self._listener.own_write()

    def claim_requests(self, claimer: str, limit: int = 16) -> list[Request]:
        _check_text(claimer, "claimer name", claimer)
        rows = self._query(
            "claiming mailbox requests",
            # The CTE runs once (MATERIALIZED): `seq IN (subquery with LIMIT)` may be
            # re-evaluated by the planner and claim more than `limit`.
            "WITH picked AS MATERIALIZED (SELECT seq FROM {s}.requests WHERE status = %s "
            "ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE {s}.requests r SET status = %s, claimed_by = %s FROM picked "
            f"WHERE r.seq = picked.seq RETURNING r.seq, {_prefixed('r.', REQUEST_COLUMNS)}",
            (PENDING, limit, CLAIMED, claimer),
        )
        return [request_from_row(row[1:]) for row in sorted(rows, key=lambda row: row[0])]

    def answer_request(self, request_id: str, error: str | None = None) -> None:
        if _unstorable(request_id):
            raise request_not_found(request_id)
        answer = None if error is None else error.replace("\x00", "\\0")
        with self._connection(f"answering request {request_id!r}") as conn:
            answered = conn.execute(
                self._sql(
                    "WITH answered AS (UPDATE {s}.requests "
                    "SET status = %s, answer = %s, answered_at = %s "
                    "WHERE request_id = %s RETURNING 1) "
                    "SELECT pg_notify(%s, 'answered') FROM answered"
                ),
                (FAILED if error else DONE, answer, time.time(), request_id, self.channel),
            ).fetchone()
        if answered is None:
            raise request_not_found(request_id)
        self._listener.own_write()

    def prune_requests(self, answered_before: float) -> int:
        sql = self._sql(PRUNE_SQL.format(table="{s}.requests", mark="%s"))

        def delete_batch(limit: int) -> int:
            with self._connection("pruning answered requests") as conn:
                params = (DONE, FAILED, answered_before, limit)
                return int(conn.execute(sql, params).rowcount)

        return in_batches(delete_batch)

    def get_request(self, request_id: str) -> Request:
        if _unstorable(request_id):
            raise request_not_found(request_id)
        rows = self._query(
            f"reading request {request_id!r}",
            f"SELECT {REQUEST_COLUMNS} FROM {{s}}.requests WHERE request_id = %s",
            (request_id,),
        )
        if not rows:
            raise request_not_found(request_id)
        return request_from_row(rows[0])

    def mailbox_version(self) -> int:
        """A number that moves when a request is posted or answered, by any process.

        No round trip: it counts this store's own posts and answers, plus the NOTIFYs
        that arrived on its LISTEN connection (opened by the first call). Polling it is
        as cheap as reading a socket that has nothing to say.
        """
        self._fail_if_closed()
        return self._listener.version(self._where)

    def wait_for_requests(self, timeout: float, *, answers: bool = True) -> bool:
        """Block until the mailbox changes (a NOTIFY from any process) or `timeout` passes.

        True if it changed, or may have (the first call, which starts listening, and a
        reconnection both return True at once: claim, then wait again); False on timeout.
        `answers=False`: only a posted request wakes it, not an answer (a daemon has no use
        for answers, and with many daemons every answer would wake every one of them).
        A daemon loop: `while not stopping: store.wait_for_requests(1.0); claim...`.
        """
        self._fail_if_closed()
        return self._listener.wait(timeout, self._where, answers=answers)

    def _fail_if_closed(self) -> None:
        if self._closed:
            raise StoreError(f"the PostgreSQL store {self._where} is closed")

    def close(self) -> None:
        """Close the pool's connections and the listener; later calls raise StoreError."""
        if not self._closed:
            self._closed = True
            self._pool.close()
            self._listener.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self._where})"


class _Listener:
    """The store's LISTEN connection: counts mailbox NOTIFYs, and lets a daemon block on them.

    Opened on first use. A lost connection is reopened on the next call, which then
    reports a change (notifications may have been missed while it was down); if reopening
    fails, the next attempt waits `RETRY` seconds. A wait listens in slices of `SLICE`
    seconds, so closing the store ends it that soon.
    """

    SLICE: Final = 0.2
    RETRY: Final = 1.0  # seconds between attempts to reopen a connection that failed

    def __init__(self, psycopg: Any, connect: Callable[[], Any], channel: str) -> None:
        self._psycopg = psycopg
        self._connect = connect
        self._channel = channel
        self._lock = threading.Lock()  # held while using the connection (and waiting)
        self._count_lock = threading.Lock()
        self._conn: Any = None
        self._seen = 0  # notifications received plus this store's own writes
        self._closing = threading.Event()
        self._retry_at = 0.0

    def own_write(self) -> None:
        self._count(1)  # its NOTIFY arrives later; count our own write at once

    def _count(self, n: int) -> None:
        with self._count_lock:
            self._seen += n

    def version(self, where: str) -> int:
        if not self._lock.acquire(blocking=False):
            return self._seen  # a waiter holds the connection; it will count
        try:
            self._receive(0.0, where)
            return self._seen
        finally:
            self._lock.release()

    def wait(self, timeout: float, where: str, *, answers: bool = True) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self._lock.acquire(timeout=max(timeout, 0.0)):
            return False
        try:
            while not self._closing.is_set():
                remaining = deadline - time.monotonic()
                if self._receive(min(max(remaining, 0.0), self.SLICE), where, answers):
                    return True
                if deadline - time.monotonic() <= 0:
                    return False
            return False
        finally:
            self._lock.release()

    def _receive(self, timeout: float, where: str, answers: bool = True) -> bool:
        """Wait up to `timeout` for notifications (lock held); True if anything moved (with
        `answers=False`: if a request was posted)."""
        psycopg = self._psycopg
        if self._conn is None:
            pause = self._retry_at - time.monotonic()
            if pause > 0:  # the last attempt failed: no storm of reconnections
                self._closing.wait(min(pause, timeout))
                return False
            try:
                self._conn = self._connect()
                self._conn.execute(
                    psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._channel))
                )
            except psycopg.Error as exc:
                self._drop()
                self._retry_at = time.monotonic() + self.RETRY
                raise StoreError(
                    f"listening for mailbox requests in the PostgreSQL store {where} failed: "
                    f"{_reason(exc)}; check that the server is reachable (retried after "
                    f"{self.RETRY:g} s)"
                ) from exc
            self._count(1)
            return True
        try:
            received = [n.payload for n in self._conn.notifies(timeout=timeout, stop_after=1)]
        except psycopg.Error:
            self._drop()  # reopened by the next call, which reports a change
            self._count(1)
            return True
        self._count(len(received))
        return bool(received) if answers else _POSTED in received

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self._closing.set()  # a waiter returns within SLICE seconds
        with self._lock:
            self._drop()


# --------------------------------------------------------------------------- helpers


def _import_driver() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg.sql
        import psycopg_pool
    except ImportError as exc:
        raise StoreError(
            "PostgresStore needs psycopg 3 and psycopg-pool: pip install 'stageline[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


def _schema_from_url(dsn: str, schema: str | None) -> tuple[str, str]:
    """The dsn without stageline's `schema` URL parameter, and the schema to use."""
    if not dsn.startswith(("postgresql://", "postgres://")) or "?" not in dsn:
        return dsn, schema or "stageline"
    base, _, query = dsn.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    named = [value for key, value in pairs if key == "schema"]
    if not named:
        return dsn, schema or "stageline"
    if len(named) > 1 or (schema is not None and schema != named[0]):
        raise StoreError(
            f"the PostgreSQL store is given two schemas ({[*named, schema]}); give one, "
            "as schema= or as the URL's ?schema="
        )
    rest = urllib.parse.urlencode([(k, v) for k, v in pairs if k != "schema"])
    return (f"{base}?{rest}" if rest else base), named[0]


def _params(psycopg: Any, dsn: str) -> dict[str, Any]:
    try:
        return dict(psycopg.conninfo.conninfo_to_dict(dsn))
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot read the PostgreSQL dsn: {_reason(exc)}; "
            "give a URL (postgresql://user@host:5432/db) or a libpq string"
        ) from exc


def _describe(psycopg: Any, dsn: str, schema: str) -> str:
    """host:port/dbname (schema), never the password."""
    params = _params(psycopg, dsn)
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or '?'} schema {schema!r}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_id(value: str, what: str) -> None:
    _check_text(value, what, value)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise StoreError(
            f"{what} {value[:40]!r}... is {size} bytes in UTF-8; PostgresStore takes ids up "
            f"to {MAX_ID_BYTES} bytes: use a shorter id"
        )


def _check_text(value: str | None, what: str, run_id: str) -> None:
    if value is not None and "\x00" in value:
        raise StoreError(
            f"the {what} {value[:40]!r} of run {run_id[:40]!r} contains a NUL character, "
            "which PostgreSQL text cannot hold: use an id without NUL"
        )
    if value is not None and not is_utf8(value):
        raise StoreError(
            f"the {what} {value[:40]!r} is not valid Unicode (it came from bytes that are "
            "not UTF-8): use valid UTF-8 text"
        )


def _prefixed(prefix: str, columns: str) -> str:
    return ", ".join(prefix + column.strip() for column in columns.split(","))


def _unstorable(value: str | None) -> bool:
    """True for an id PostgreSQL cannot hold (so no stored run has it)."""
    return value is not None and ("\x00" in value or not is_utf8(value))
