"""PostgreSQL for the bench: is the server there, and a scratch schema per sample.

Every library's sample on PostgreSQL gets a schema of its own on the server of
$STAGELINE_BENCH_PG_DSN (default postgresql://postgres@127.0.0.1:5432/test), created before
and dropped after (CASCADE), so no sample sees another's rows. The server's defaults are
kept: synchronous_commit=on, so a commit returns once its WAL is flushed to disk.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

PG_DSN = os.environ.get("STAGELINE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def pg_unavailable() -> str | None:
    """Why the PostgreSQL cases cannot run, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_DSN} does not answer ({str(exc).strip().splitlines()[0]})"
    return None


@contextmanager
def scratch_schema(prefix: str) -> Iterator[str]:
    """A new schema's name, dropped with everything in it on the way out."""
    import psycopg
    from psycopg import sql

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def dsn_in(schema: str) -> str:
    """PG_DSN with `schema` first on the search_path of every connection."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(PG_DSN, options=f"-c search_path={schema}")


def synchronous_commit(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    return str(row[0]) if row else "?"
