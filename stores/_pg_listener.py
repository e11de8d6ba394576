"""A LISTEN connection of a PostgresStore: one channel's NOTIFYs, counted and waited for.

A store has one for its mailbox and, once a journal is watched, one for its journals
(stores/_versions.py).

Opened on first use. A lost connection is reopened on the next call, which then reports a
change (notifications may have been missed while it was down); if reopening fails, the
next attempt waits `RETRY` seconds. A wait listens in slices of `SLICE` seconds, so
closing the store ends it that soon.

Deadlines and the reconnection back-off read time.monotonic(), not the store's Clock:
they bound how long this thread blocks on a real socket, which a ManualClock cannot move.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

from stageline.core.errors import StoreError

from ._pg_driver import reason
from ._pg_sql import ABORT, POSTED


class Listener:
    """Counts the NOTIFYs on `channel` (plus its store's own writes); waits for them."""

    SLICE: Final = 0.2
    RETRY: Final = 1.0  # seconds between attempts to reopen a connection that failed

    def __init__(
        self, psycopg: Any, connect: Callable[[], Any], channel: str, what: str = "mailbox requests"
    ) -> None:
        self._psycopg = psycopg
        self._what = what  # what the channel announces, for an error message
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
        """The count so far, after reading what has arrived (without waiting)."""
        if not self._lock.acquire(blocking=False):
            return self._seen  # a waiter holds the connection; it will count
        try:
            self._receive(0.0, where)
            return self._seen
        finally:
            self._lock.release()

    def wait(self, timeout: float, where: str, *, answers: bool = True) -> bool:
        """Block until a notification (with `answers=False`: a posted request or an abort
        flag set on a run) or timeout."""
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
        `answers=False`: if a request was posted or a run's abort flag set)."""
        if self._conn is None:
            return self._reconnect(timeout, where)
        try:
            received = [n.payload for n in self._conn.notifies(timeout=timeout, stop_after=1)]
        except self._psycopg.Error:
            self._drop()  # reopened by the next call, which reports a change
            self._count(1)
            return True
        self._count(len(received))
        return bool(received) if answers else (POSTED in received or ABORT in received)

    def _reconnect(self, timeout: float, where: str) -> bool:
        """Open the connection and LISTEN (True: something may have been missed), unless
        the last attempt failed less than RETRY seconds ago (False, after waiting)."""
        pause = self._retry_at - time.monotonic()
        if pause > 0:  # the last attempt failed: no storm of reconnections
            self._closing.wait(min(pause, timeout))
            return False
        sql = self._psycopg.sql
        try:
            self._conn = self._connect()
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except self._psycopg.Error as exc:
            self._drop()
            self._retry_at = time.monotonic() + self.RETRY
            raise StoreError(
                f"listening for {self._what} in the PostgreSQL store {where} failed: "
                f"{reason(exc)}; check that the server is reachable (retried after "
                f"{self.RETRY:g} s)"
            ) from exc
        self._count(1)
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self._closing.set()  # a waiter returns within SLICE seconds
        with self._lock:
            self._drop()
