"""The store under test: its URLs, SQL behind its back, and what the mailbox answered.

On PostgreSQL every daemon connects with an `application_name` of its own
(`chaos-TAG-dN`, a URL parameter the store passes on to libpq), so its backends can be
found in `pg_stat_activity` and terminated, and nobody else's are. The raw connection
(`chaos-TAG-raw`) damages rows and inserts poison requests the way a fault would: with
no help from the store.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _database_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


DATABASE_ERRORS = _database_errors()
"""What the raw connection raises when the database refuses a statement."""
REQUEST_COLUMNS = "request_id, kind, run_id, status, claimed_by, answer"


@dataclass(frozen=True, slots=True)
class Answer:
    """A mailbox request as the store holds it at the end."""

    request_id: str
    kind: str
    run_id: str
    status: str
    claimed_by: str | None
    answer: str | None


@dataclass
class Target:
    """Where the daemons run: a PostgreSQL schema (`dsn`, `schema`) or a SQLite file."""

    url: str
    tag: str
    dsn: str | None = None
    schema: str | None = None
    path: Path | None = None
    owned: bool = False
    """The script made the schema (or file) and drops it at the end."""

    @property
    def postgres(self) -> bool:
        return self.schema is not None

    def url_for(self, who: str) -> str:
        """The store URL a process named `who` uses (its application_name on PostgreSQL)."""
        if not self.postgres:
            return self.url
        return f"{self.url}&application_name={self.application_name(who)}"

    def application_name(self, who: str) -> str:
        return f"chaos-{self.tag}-{who}"


def make_target(store: str, dsn: str, folder: Path, seed: int) -> Target:
    """The target `--store` names: `postgres` (a new schema), `sqlite` (a new file in
    `folder`), or a store URL of either kind (used as it is, left in place)."""
    tag = uuid.uuid4().hex[:8]
    if store == "postgres":
        schema = f"chaos_{seed}_{tag}"
        return Target(_with_schema(dsn, schema), tag, dsn, schema, owned=True)
    if store == "sqlite":
        path = folder / "chaos.db"
        return Target(f"sqlite:///{path}", tag, path=path, owned=True)
    if store.startswith("sqlite:///"):
        return Target(store, tag, path=Path(store[len("sqlite:///") :]))
    base, _, query = store.partition("?")
    options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    schema = options.pop("schema", "stageline")
    rest = "&".join(f"{k}={v}" for k, v in options.items())
    return Target(_with_schema(base + (f"?{rest}" if rest else ""), schema), tag, base, schema)


def _with_schema(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"


class Raw:
    """SQL on the target's tables behind the store's back. `{s}.` before a table is the
    PostgreSQL schema (dropped on SQLite); parameters are written `%s`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        if target.postgres:
            import psycopg
            from psycopg import sql

            self._quoted = sql.Identifier(str(target.schema)).as_string(None)
            self._conn: Any = psycopg.connect(
                str(target.dsn), autocommit=True, application_name=target.application_name("raw")
            )
        else:
            self._conn = sqlite3.connect(str(target.path), timeout=30, isolation_level=None)

    def rows(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.target.postgres:
            cursor = self._conn.execute(statement.replace("{s}", self._quoted).encode(), params)
            return list(cursor.fetchall()) if cursor.description else []
        text = statement.replace("{s}.", "").replace("%s", "?")
        return list(self._conn.execute(text, params).fetchall())

    def close(self) -> None:
        self._conn.close()

    # --- faults -----------------------------------------------------------------------

    def damage(self, run_id: str, garbage: bytes) -> bool:
        """Overwrite the run's state column with `garbage`; whether the row was there."""
        found = self.rows("UPDATE {s}.runs SET state = %s WHERE run_id = %s RETURNING run_id",
                          (garbage, run_id))  # fmt: skip
        return bool(found)

    def poison(self, request_id: str, kind: str, run_id: str, args: bytes, at: float) -> None:
        """A pending request the store cannot read back (its args, or its kind)."""
        self.rows(
            "INSERT INTO {s}.requests (request_id, kind, run_id, pipeline_id, args, status, "
            "posted_at) VALUES (%s, %s, %s, %s, %s, 'pending', %s)",
            (request_id, kind, run_id, "short", args, at),
        )

    def terminate(self, names: list[str]) -> int:
        """Terminate every backend of the processes with these application names; how many."""
        if not names:
            return 0
        rows = self.rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name = ANY(%s)",
            (names,),
        )
        return sum(1 for (done,) in rows if done)

    # --- reading ----------------------------------------------------------------------

    def statuses(self) -> dict[str, tuple[str, str]]:
        """run_id -> (pipeline_id, status column), read raw (damaged rows included)."""
        return {
            r: (p, s) for r, p, s in self.rows("SELECT run_id, pipeline_id, status FROM {s}.runs")
        }

    def driven(self, run_ids: set[str], now: float) -> list[str]:
        """Of `run_ids`, those pending or running under a lease still alive at `now` (a
        damaged row its owner may yet commit over), read raw."""
        rows = self.rows("SELECT run_id, status, lease_until FROM {s}.runs")
        return [
            run_id
            for run_id, status, lease_until in rows
            if run_id in run_ids and status in ("pending", "running")
            and lease_until is not None and lease_until > now
        ]  # fmt: skip

    def answers(self) -> dict[str, Answer]:
        rows = self.rows(f"SELECT {REQUEST_COLUMNS} FROM {{s}}.requests")
        return {row[0]: Answer(*row) for row in rows}

    def unanswered(self) -> int:
        rows = self.rows("SELECT count(*) FROM {s}.requests WHERE status = 'pending'")
        return int(rows[0][0])


def drop(target: Target) -> None:
    """Remove what the script made: the schema (the SQLite file goes with its folder)."""
    if not (target.owned and target.postgres):
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(str(target.dsn), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(str(target.schema)))
        )
