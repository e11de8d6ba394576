"""Store URLs: `sqlite:///path`, `memory://`, `postgresql://...` -> a Store.

`sqlite:///runs.db` is the relative path runs.db, `sqlite:////var/lib/runs.db` the
absolute /var/lib/runs.db (as SQLAlchemy reads them); a bare path ending in .db or
.sqlite is read as SQLite too. `memory://` is a fresh MemoryStore (useful only inside one
process). `postgresql://` and `postgres://` need PostgresStore, imported only then.
A `clock` given to `open_store` is passed on to the store (its `clock` argument), and so is
`create`: `create=False` opens only an existing store (a missing SQLite file or PostgreSQL
schema is StoreError naming it, and nothing is created; read-only commands use it).
`sqlite:///file:x.db` is the file named `file:x.db`, never a SQLite URI.
"""

from __future__ import annotations

from stageline.core.clock import Clock
from stageline.core.errors import StoreError
from stageline.core.store import Store

_SQLITE = "sqlite://"
_POSTGRES = ("postgresql://", "postgres://")


def open_store(url: str, *, clock: Clock | None = None, create: bool = True) -> Store:
    """The store a URL names; StoreError (one clear line) if it cannot be opened.

    `clock` (default: the system clock) is the store's clock. `create=False`: a store that
    does not exist yet is StoreError naming it, and is not created (MemoryStore ignores it).
    """
    if not url:
        raise StoreError("no store given: pass --store URL or set STAGELINE_STORE")
    if url.startswith(_SQLITE):
        return _sqlite(_sqlite_path(url), clock, create)
    if url.endswith((".db", ".sqlite", ".sqlite3")) and "://" not in url:
        return _sqlite(url, clock, create)
    if url == "memory://":
        from .memory import MemoryStore

        return MemoryStore(clock=clock)
    if url.startswith(_POSTGRES):
        return _postgres(url, clock, create)
    raise StoreError(
        f"cannot read store URL {url!r}: use sqlite:///path.db, postgresql://... or memory://"
    )


def _sqlite_path(url: str) -> str:
    rest = url[len(_SQLITE) :]
    if not rest.startswith("/") or rest == "/":
        raise StoreError(f"SQLite store URL {url!r} needs a path: sqlite:///runs.db")
    return rest[1:]


def _sqlite(path: str, clock: Clock | None, create: bool) -> Store:
    from .sqlite import SqliteStore

    return SqliteStore(path, clock=clock, create=create)


def _postgres(url: str, clock: Clock | None, create: bool) -> Store:
    from .postgres import PostgresStore  # StoreError naming the extra if psycopg is absent

    return PostgresStore(url, clock=clock, create=create)
