"""Connections to PostgreSQL: the pool a PostgresStore's calls share, failing as StoreError.

Connections run in autocommit mode. A pooled connection idle for more than `check_after`
seconds is tested before use (one empty round trip), so one the server closed while idle
(a restart, an idle timeout in a proxy) is replaced instead of failing the next call.
Busy connections are not tested: a test on every call costs about a third of a stage
commit. A connection lost during a call raises StoreError; the pool drops it and the next
call gets a new one.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stageline.core.errors import StoreError

from ._common import commit_refused
from ._pg_driver import connect_kwargs, describe, import_driver, reason, schema_from_url

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    Connection = psycopg.Connection[tuple[Any, ...]]

_NO_PRIVILEGE = "42501"  # insufficient_privilege


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """PostgresStore's pool settings, as its constructor documents them."""

    min_size: int
    max_size: int
    pool_timeout: float
    connect_timeout: float
    check_after: float | None


class Connections:
    """The store's connections to one schema: a pool, and single ones on request.

    Made without I/O; `open` prepares the schema on a connection of its own, then opens
    the pool. `where` names the store in messages (host, port, database and schema, never
    the password).
    """

    _pool: ConnectionPool[Connection]

    def __init__(self, dsn: str, schema: str | None, limits: PoolLimits) -> None:
        self.driver, self._pool_module = import_driver()
        self._dsn, self.schema = schema_from_url(dsn, schema)
        _check_settings(self.schema, limits)
        self._limits = limits
        self.where = describe(self.driver, self._dsn, self.schema)
        self._kwargs = connect_kwargs(self.driver, self._dsn, limits.connect_timeout)
        self._quoted = self.driver.sql.Identifier(self.schema).as_string(None)
        self._closed = False
        # Pool housekeeping, not the runtime's time: idle ages are measured with the
        # process's own time.monotonic(), never the store's injectable Clock (a test's
        # ManualClock must not make every connection look fresh, or stale).
        self._last_used: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def sql(self, text: str) -> str:
        """`text` with its `{s}` placeholders replaced by the quoted schema."""
        return text.replace("{s}", self._quoted)

    def connect(self) -> Any:
        """A new connection of its own, outside the pool (the caller closes it)."""
        return self.driver.connect(self._dsn, **self._kwargs)

    def open(self, prepare: Callable[[Any], None]) -> None:
        """Run `prepare` (the schema's migration) on a connection, then open the pool."""
        try:
            with self.connect() as conn:
                prepare(conn)
        except self.driver.Error as exc:
            raise StoreError(
                f"cannot open the PostgreSQL store {self.where}: {reason(exc)}; {_hint(exc)}"
            ) from exc
        self._pool = self._new_pool()
        try:
            self._pool.open(wait=self._limits.min_size > 0, timeout=self._open_timeout())
        except self.driver.Error as exc:
            self._pool.close()
            raise StoreError(
                f"cannot open connections to the PostgreSQL store {self.where}: "
                f"{reason(exc)}; check the dsn and the server's max_connections"
            ) from exc

    def _new_pool(self) -> ConnectionPool[Connection]:
        limits = self._limits
        pool: ConnectionPool[Connection] = self._pool_module.ConnectionPool(
            self._dsn,
            kwargs=self._kwargs,
            min_size=limits.min_size,
            max_size=limits.max_size,
            open=False,
            timeout=limits.pool_timeout,
            check=None if limits.check_after is None else self._check_if_idle,
            name=f"stageline:{self.schema}",
        )
        return pool

    def _open_timeout(self) -> float:
        return max(self._limits.connect_timeout, 1.0)

    @contextmanager
    def connection(self, what: str, refusing: bool = False) -> Iterator[Connection]:
        """A pooled connection; driver errors become StoreError naming `what`.

        `refusing` (commits and new runs): an error the server will give again for the
        same values (SQLSTATE class 22, data exception, e.g. a NUL or a number out of
        range; class 23, a constraint) is CommitRefused.
        """
        self.fail_if_closed()
        try:
            with self._pool.connection() as conn:
                try:
                    yield conn
                finally:
                    self._last_used[conn] = time.monotonic()  # housekeeping: see __init__
        except self.driver.Error as exc:
            if refusing and isinstance(exc, self._permanent):
                where = f"the PostgreSQL store {self.where}"
                raise commit_refused(what, where, reason(exc)) from exc
            raise self._failure(what, exc) from exc

    @property
    def _permanent(self) -> tuple[type[BaseException], ...]:
        return (self.driver.DataError, self.driver.IntegrityError)

    def query(self, what: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of one statement (`{s}` is the schema)."""
        with self.connection(what) as conn:
            return conn.execute(self.sql(sql), params).fetchall()

    def _check_if_idle(self, conn: Connection) -> None:
        """The pool's check: test a connection that has been idle for a while."""
        idle = time.monotonic() - self._last_used.get(conn, 0.0)  # housekeeping: see __init__
        check_after = self._limits.check_after
        if check_after is not None and idle > check_after:
            conn.execute("")

    def _failure(self, what: str, exc: BaseException) -> StoreError:
        if isinstance(exc, self.driver.OperationalError):
            if exc.__class__.__name__ == "PoolTimeout":
                hint = "no connection was free or the server did not answer in time"
            else:
                hint = "the connection to the server failed or was lost"
            return StoreError(
                f"{what} failed in the PostgreSQL store {self.where}: {hint} "
                f"({reason(exc)}); nothing already committed is lost: retry once the "
                "server is reachable (a run stays at its last commit and can be resumed)"
            )
        return StoreError(f"{what} failed in the PostgreSQL store {self.where}: {reason(exc)}")

    @property
    def closed(self) -> bool:
        return self._closed

    def fail_if_closed(self) -> None:
        if self._closed:
            raise StoreError(f"the PostgreSQL store {self.where} is closed")

    def close(self) -> None:
        """Close the pool's connections; later calls raise StoreError."""
        self._closed = True
        self._pool.close()


def _check_settings(schema: str, limits: PoolLimits) -> None:
    if not schema or "\x00" in schema:
        raise StoreError(f"schema must be a non-empty name without NUL, got {schema!r}")
    if limits.min_size < 0 or limits.max_size < max(limits.min_size, 1):
        raise StoreError(
            f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1, "
            f"got min_size={limits.min_size}, max_size={limits.max_size}"
        )


def _hint(exc: BaseException) -> str:
    """What to do about a failure to open (or migrate) the store."""
    if getattr(exc, "sqlstate", None) == _NO_PRIVILEGE:
        return (
            "this role may not create or upgrade the schema: open the store once as "
            "a role that may (e.g. the schema's owner), then grant this one USAGE on "
            "the schema and SELECT, INSERT, UPDATE on its tables"
        )
    return "check the dsn and that the server is running"
