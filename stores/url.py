"""Store URLs: `sqlite:///path`, `memory://`, `postgresql://...` -> a Store.

`sqlite:///runs.db` is the relative path runs.db, `sqlite:////var/lib/runs.db` the
absolute /var/lib/runs.db (as SQLAlchemy reads them); `sqlite:/runs.db` or
`sqlite://runs.db` is an error saying so. A bare path (no `scheme:` in front, or one
ending in .db, .sqlite or .sqlite3) is read as SQLite too: `runs.db`, `/var/lib/runs.db`.
`memory://` is a fresh MemoryStore (useful only inside one process: `serving_url` refuses
it for a daemon). `redacted(url)` is the URL with its password hidden, for printing.
`postgresql://` and `postgres://` need PostgresStore, imported only then.
A `clock` given to `open_store` is passed on to the store (its `clock` argument), and so is
`create`: `create=False` opens only an existing store (a missing SQLite file or PostgreSQL
schema is StoreError naming it, and nothing is created; read-only commands use it).
`sqlite:///file:x.db` is the file named `file:x.db`, never a SQLite URI.
"""

from __future__ import annotations

import re

from stageline.core.clock import Clock
from stageline.core.errors import StoreError
from stageline.core.store import Store

_SQLITE = "sqlite://"
_SQLITE_SCHEME = "sqlite:"
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&]*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_POSTGRES = ("postgresql://", "postgres://")


def open_store(url: str, *, clock: Clock | None = None, create: bool = True) -> Store:
    """The store a URL names; StoreError (one clear line) if it cannot be opened.

    `clock` (default: the system clock) is the store's clock. `create=False`: a store that
    does not exist yet is StoreError naming it, and is not created (MemoryStore ignores it).
    """
    if not url:
        raise StoreError("no store given: pass --store URL or set STAGELINE_STORE")
    if url.startswith(_SQLITE_SCHEME):
        return _sqlite(_sqlite_path(url), clock, create)
    if _bare_path(url):
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
    rest = url[len(_SQLITE) :] if url.startswith(_SQLITE) else ""
    if not rest.startswith("/") or rest == "/":
        raise StoreError(
            f"cannot read SQLite store URL {url!r}: write sqlite:///relative.db (three "
            "slashes) for a path relative to the current folder, or sqlite:////abs/path.db "
            "(four) for an absolute one"
        )
    return rest[1:]


def _bare_path(url: str) -> bool:
    """A plain file path rather than a URL: no `scheme:` in front (or a SQLite suffix)."""
    if "://" in url:
        return False
    return url.endswith((".db", ".sqlite", ".sqlite3")) or _SCHEME.match(url) is None


def serving_url(url: str) -> str:
    """`url`, checked for a daemon: StoreError for `memory://`, which no other process
    (no CLI command, no other daemon) could reach."""
    if url == "memory://":
        raise StoreError(
            "serve needs a store other processes can reach; memory:// lives inside one "
            "process: use sqlite:///runs.db (or postgresql://...)"
        )
    return url


def redacted(url: str) -> str:
    """`url` with its password (`user:secret@host`, `?password=secret`) shown as `***`."""
    if not url.startswith(_POSTGRES):
        return url
    url = _PASSWORD_PARAMETER.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"


def _sqlite(path: str, clock: Clock | None, create: bool) -> Store:
    from .sqlite import SqliteStore

    return SqliteStore(path, clock=clock, create=create)


def _postgres(url: str, clock: Clock | None, create: bool) -> Store:
    from .postgres import PostgresStore  # StoreError naming the extra if psycopg is absent

    return PostgresStore(url, clock=clock, create=create)
