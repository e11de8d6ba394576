"""Shared fixtures: the `store` fixture runs a test once per store kind.

PostgreSQL: the server at `STAGELINE_TEST_PG_DSN` (default
postgresql://postgres@127.0.0.1:5432/test) is used if it answers. If it does not, the
PostgreSQL tests are skipped with the reason, unless `STAGELINE_REQUIRE_PG=1` (CI sets it),
which makes them fail. One schema per test session holds the tables (emptied before each
test) and is dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from stageline.stores import MemoryStore, PostgresStore, SqliteStore
from stageline.testing import EventRecorder

STORE_KINDS = ["memory", "sqlite", "postgres"]
PG_DSN = os.environ.get("STAGELINE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("STAGELINE_REQUIRE_PG") == "1"


def pg_problem(dsn: str) -> str | None:
    """Why the PostgreSQL tests cannot run against `dsn`, or None if they can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"cannot connect to {dsn}: {str(exc).strip().splitlines()[0]}"
    return None


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's dsn; skips (or fails, with STAGELINE_REQUIRE_PG=1) if unreachable."""
    problem = pg_problem(PG_DSN)
    if problem is not None:
        message = (
            f"POSTGRESQL TESTS NOT RUN: {problem}. Start a server or set STAGELINE_TEST_PG_DSN"
        )
        if REQUIRE_PG:
            pytest.fail(f"{message} (STAGELINE_REQUIRE_PG=1 makes this a failure)", pytrace=False)
        pytest.skip(message)
    return PG_DSN


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="session")
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test session, with stageline's tables; dropped at the end."""
    schema = f"stageline_test_{uuid.uuid4().hex[:12]}"
    PostgresStore(pg_dsn, schema=schema, min_size=0).close()
    yield schema
    drop_schema(pg_dsn, schema)


@pytest.fixture
def pg_url(pg_dsn: str) -> Iterator[str]:
    """A store URL (postgresql://...?schema=...) on a schema of this test; dropped after."""
    if not pg_dsn.startswith(("postgresql://", "postgres://")):
        pytest.skip(f"store URLs need STAGELINE_TEST_PG_DSN as a URL, got {pg_dsn!r}")
    schema = f"stageline_t_{uuid.uuid4().hex[:12]}"
    yield f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}schema={schema}"
    drop_schema(pg_dsn, schema)


def empty_pg_store(dsn: str, schema: str) -> PostgresStore:
    """A PostgresStore on the session's schema, with no runs in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = %s AND table_name <> 'stageline_meta'",
            (schema,),
        ).fetchall()
        names = sql.SQL(", ").join(sql.Identifier(schema, name) for (name,) in tables)
        conn.execute(sql.SQL("TRUNCATE {}").format(names))
    return PostgresStore(dsn, schema=schema)


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[object]:
    """Every store stageline ships, one test run each."""
    if request.param == "memory":
        s: object = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "runs.db")
    else:
        s = empty_pg_store(request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema"))
    yield s
    s.close()  # type: ignore[attr-defined]


Recorder = EventRecorder


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[object, object]]:
    """A SQL store and a raw connection to its tables (test_store_fleet.Raw)."""
    from test_store_fleet import Raw

    if request.param == "sqlite":
        store: object = SqliteStore(tmp_path / "runs.db")
        raw = Raw.sqlite(store.path)  # type: ignore[attr-defined]
    else:
        dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        store, raw = empty_pg_store(dsn, schema), Raw.postgres(dsn, schema)
    yield store, raw
    raw.close()
    store.close()  # type: ignore[attr-defined]
