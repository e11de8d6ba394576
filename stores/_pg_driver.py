"""The psycopg driver at arm's length: imported on demand, reading dsns, wording its errors.

Nothing here opens a connection; `_pg_pool` does, with what this module works out.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from stageline.core.errors import StoreError

DEFAULT_SCHEMA = "stageline"
_URL_PREFIXES = ("postgresql://", "postgres://")


def import_driver() -> tuple[Any, Any]:
    """psycopg and psycopg_pool; StoreError naming the `postgres` extra if absent."""
    try:
        import psycopg
        import psycopg.sql
        import psycopg_pool
    except ImportError as exc:
        raise StoreError(
            "PostgresStore needs psycopg 3 and psycopg-pool: pip install 'stageline[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


def schema_from_url(dsn: str, schema: str | None) -> tuple[str, str]:
    """The dsn without stageline's `schema` URL parameter, and the schema to use."""
    if not dsn.startswith(_URL_PREFIXES) or "?" not in dsn:
        return dsn, schema or DEFAULT_SCHEMA
    base, _, query = dsn.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    named = [value for key, value in pairs if key == "schema"]
    if not named:
        return dsn, schema or DEFAULT_SCHEMA
    if len(named) > 1 or (schema is not None and schema != named[0]):
        raise StoreError(
            f"the PostgreSQL store is given two schemas ({[*named, schema]}); give one, "
            "as schema= or as the URL's ?schema="
        )
    rest = urllib.parse.urlencode([(k, v) for k, v in pairs if k != "schema"])
    return (f"{base}?{rest}" if rest else base), named[0]


def params(psycopg: Any, dsn: str) -> dict[str, Any]:
    """The dsn's connection parameters; StoreError if the driver cannot read it."""
    try:
        return dict(psycopg.conninfo.conninfo_to_dict(dsn))
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot read the PostgreSQL dsn: {reason(exc)}; "
            "give a URL (postgresql://user@host:5432/db) or a libpq string"
        ) from exc


def describe(psycopg: Any, dsn: str, schema: str) -> str:
    """host:port/dbname (schema), never the password."""
    found = params(psycopg, dsn)
    host = found.get("host") or "localhost"
    port = found.get("port") or 5432
    return f"{host}:{port}/{found.get('dbname') or found.get('user') or '?'} schema {schema!r}"


def connect_kwargs(psycopg: Any, dsn: str, connect_timeout: float) -> dict[str, Any]:
    """Keyword arguments of every connection: autocommit, a timeout, and a name
    (`application_name`, seen in `pg_stat_activity`) unless the dsn gives one."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, round(connect_timeout)),
    }
    if "application_name" not in params(psycopg, dsn):
        kwargs["application_name"] = "stageline"
    return kwargs


def reason(exc: BaseException) -> str:
    """The first line of a driver error (its class name if it has no text)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
