"""The operators' view of a SQL store: its mailbox listed and cancelled, its daemons' heartbeats.

`SqlFleet` gives SqliteStore and PostgresStore the same five Store methods
(`list_requests`, `cancel_request`, `record_heartbeat`, `remove_heartbeat`,
`list_heartbeats`) on two hooks of theirs: `_fleet_rows(what, statement, params)` runs one
statement (`{s}.` before a table name, `?` for a parameter) and returns its rows, and
`_fleet_answered()` tells the store's mailbox a request was answered (SQLite counts its
own writes, PostgreSQL NOTIFYs); answers are dated by the store's `clock`. Every
writing statement returns a row per row written.

A heartbeat is a plain mapping, `HEARTBEAT_FIELDS`: `owner` (the daemon's registry owner
id, its key), `pid`, `host`, `started_at` and `beat_at` (wall-clock seconds), `runs`
(the runs it holds) and `lease_ttl` (seconds: it beats at least every third of it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from stageline.core.clock import Clock
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.errors import StoreError
from stageline.core.mailbox import ANSWERED, CLAIMED, DONE, FAILED, PENDING, Request

from ._common import request_not_found
from ._rows import REQUEST_COLUMNS, request_from_row

_log = logging.getLogger("stageline")

HEARTBEAT_FIELDS: Final = (
    "owner", "pid", "host", "started_at", "beat_at", "runs", "lease_ttl"
)  # fmt: skip
CANCELLED: Final = "cancelled by an operator"
REQUEST_FILTERS: Final = {
    PENDING: (PENDING,),
    CLAIMED: (CLAIMED,),
    "answered": tuple(sorted(ANSWERED)),
    DONE: (DONE,),
    FAILED: (FAILED,),
}
"""`list_requests(status=...)`: the stored statuses each filter word stands for."""

TABLE: Final = """CREATE TABLE {s}.daemons (
    owner text PRIMARY KEY, pid bigint NOT NULL, host text NOT NULL,
    started_at double precision NOT NULL, beat_at double precision NOT NULL,
    runs bigint NOT NULL, lease_ttl double precision NOT NULL
)"""
"""Schema migration 5 of both SQL stores (SQLite reads the types by affinity)."""

_LIST: Final = (
    f"SELECT {REQUEST_COLUMNS} FROM {{s}}.requests WHERE status IN (?, ?, ?, ?) "
    "ORDER BY seq DESC LIMIT ?"
)
_CANCEL: Final = (
    "UPDATE {s}.requests SET status = ?, answer = ?, answered_at = ? "
    "WHERE request_id = ? AND status = ? RETURNING request_id"
)
_EXISTS: Final = "SELECT 1 FROM {s}.requests WHERE request_id = ?"
_BEAT: Final = (
    f"INSERT INTO {{s}}.daemons ({', '.join(HEARTBEAT_FIELDS)}) "
    f"VALUES ({', '.join('?' for _ in HEARTBEAT_FIELDS)}) ON CONFLICT (owner) DO UPDATE SET "
    f"{', '.join(f'{name} = excluded.{name}' for name in HEARTBEAT_FIELDS[1:])} RETURNING owner"
)
_FORGET: Final = "DELETE FROM {s}.daemons WHERE owner = ? RETURNING owner"
_HEARTBEATS: Final = f"SELECT {', '.join(HEARTBEAT_FIELDS)} FROM {{s}}.daemons ORDER BY owner"


def request_statuses(status: str | None) -> tuple[str, ...]:
    """The stored statuses a `list_requests` filter stands for (None: every one)."""
    if status is None:
        return (PENDING, CLAIMED, DONE, FAILED)
    try:
        return REQUEST_FILTERS[status]
    except KeyError:
        words = ", ".join(REQUEST_FILTERS)
        raise ValueError(f"request status must be one of {words}, got {status!r}") from None


def heartbeat_values(heartbeat: Mapping[str, Any]) -> tuple[Any, ...]:
    """The row of a heartbeat, in HEARTBEAT_FIELDS order; ValueError naming a missing field."""
    missing = [name for name in HEARTBEAT_FIELDS if name not in heartbeat]
    if missing:
        raise ValueError(f"a heartbeat needs {', '.join(missing)}")
    return tuple(heartbeat[name] for name in HEARTBEAT_FIELDS)


def heartbeat_from_row(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(HEARTBEAT_FIELDS, row, strict=True))


def listed_requests(rows: Sequence[Sequence[Any]], max_bytes: int) -> list[Request]:
    """Rows of REQUEST_COLUMNS decoded one by one; one that cannot be read is logged as a
    warning and left out, never raised for the list."""
    found: list[Request] = []
    for row in rows:
        try:
            found.append(request_from_row(row, max_bytes))
        except StoreError as exc:  # naming the request and what is wrong with it
            _log.warning("stageline store: listing requests: %s", exc)
    return found


class SqlFleet:
    """The fleet methods of a SQL store (see the module's docstring for its two hooks)."""

    max_state_bytes: int = DEFAULT_MAX_BYTES
    clock: Clock  # the store's: dates a cancelled request's answer

    def _fleet_rows(self, what: str, statement: str, params: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    def _fleet_answered(self) -> None:
        raise NotImplementedError

    def list_requests(self, status: str | None = None, limit: int = 100) -> list[Request]:
        """Mailbox requests, newest first (see Store.list_requests)."""
        wanted = (request_statuses(status) * 4)[:4]  # repeated to fill the four marks
        rows = self._fleet_rows("listing mailbox requests", _LIST, (*wanted, int(limit)))
        return listed_requests(rows, self.max_state_bytes)

    def cancel_request(self, request_id: str, answer: str = CANCELLED) -> bool:
        """Answer a pending request "failed" with `answer` (see Store.cancel_request)."""
        what = f"cancelling request {request_id!r}"
        params = (FAILED, answer, float(self.clock.wall()), request_id, PENDING)
        if self._fleet_rows(what, _CANCEL, params):
            self._fleet_answered()
            return True
        if not self._fleet_rows(f"reading request {request_id!r}", _EXISTS, (request_id,)):
            raise request_not_found(request_id)
        return False

    def record_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        """Write (or replace) the heartbeat of `heartbeat["owner"]`."""
        values = heartbeat_values(heartbeat)
        self._fleet_rows(f"writing the heartbeat of {values[0]!r}", _BEAT, values)

    def remove_heartbeat(self, owner: str) -> None:
        """Delete `owner`'s heartbeat (a daemon stopping cleanly); nothing if absent."""
        self._fleet_rows(f"removing the heartbeat of {owner!r}", _FORGET, (owner,))

    def list_heartbeats(self) -> list[dict[str, Any]]:
        """Every daemon's last heartbeat, by owner id."""
        rows = self._fleet_rows("reading daemon heartbeats", _HEARTBEATS, ())
        return [heartbeat_from_row(row) for row in rows]


__all__ = ["CANCELLED", "HEARTBEAT_FIELDS", "TABLE", "SqlFleet"]
