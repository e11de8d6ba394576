"""Change counters of the SQL stores: cheap numbers that move when the mailbox or a journal might.

A reader (a daemon's mailbox loop, the console's journal watcher) compares two readings
and does the real read only when they differ. Each counter may move for other writes
too, never goes back within one store object, and counts this object's own writes at
once, so a write is seen by its own store before any notification could arrive.

- SQLite (`SqliteVersions`): `PRAGMA data_version` moves when another connection (another
  process, or another store object on the same file) commits; this object's own commits
  are counted beside it. Waiting is a bounded poll, every `POLL` seconds.
- PostgreSQL (`PgJournalVersion`): every commit that appends journal events sends a
  NOTIFY on the schema's journal channel in the same statement (stores/_pg_sql.py), and a
  `Listener` of its own counts and waits for them. A channel of its own, not the
  mailbox's with another payload: daemons waiting for mailbox requests are never woken by
  stage commits, and `mailbox_version` does not move on every stage commit of the fleet.
  A listening connection of its own too, opened by the first `journal_version` or
  `wait_journal` call (only a console watching journals pays for it): the mailbox waiter
  and the journal watcher each hold their connection while they wait, so sharing one
  would delay each behind the other.

Deadlines read time.monotonic(), not the store's Clock: they bound how long a thread blocks
on a real file or socket, which a ManualClock cannot move.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ._pg_listener import Listener
from ._pg_sql import COMMIT_WITH_EVENTS

if TYPE_CHECKING:
    from ._pg_pool import Connections

POLL: Final = 0.01
"""Seconds between two readings of SQLite's `data_version` while waiting."""


def poll_until_changed(read: Callable[[], int], seen: int, timeout: float) -> int:
    """Read `read()` every POLL seconds until it differs from `seen` or `timeout` seconds
    pass; its last reading."""
    deadline = time.monotonic() + timeout
    while True:
        version = read()
        remaining = deadline - time.monotonic()
        if version != seen or remaining <= 0:
            return version
        time.sleep(min(POLL, remaining))


class SqliteVersions:
    """`mailbox_version`, `journal_version` and `wait_journal` of a SqliteStore."""

    _mailbox_writes: int  # this store's own posts and answers
    _journal_writes = 0  # this store's own commits that carried events (data_version
    # does not move for them); counted per store object once it commits

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _data_version(self) -> int:
        return int(self._query("PRAGMA data_version", ())[0][0])

    def mailbox_version(self) -> int:
        """`PRAGMA data_version` (other connections' commits) plus this store's own posts."""
        return self._data_version() + self._mailbox_writes

    def journal_version(self) -> int:
        """A number that moves whenever any run's journal may have grown: `PRAGMA
        data_version` (other connections' commits) plus this store's own commits with
        events. One statement, no file read when nothing changed."""
        return self._data_version() + self._journal_writes

    def wait_journal(self, seen: int, timeout: float) -> int:
        """Block until `journal_version()` differs from `seen` or `timeout` seconds pass
        (a poll every 10 ms); the last reading."""
        return poll_until_changed(self.journal_version, seen, timeout)


class PgJournalVersion:
    """`journal_version` and `wait_journal` of a PostgresStore, on its journal `Listener`."""

    _db: Connections
    _where: str
    schema: str

    def _listen_for_journals(self) -> None:
        """Name the schema's journal channel and make its listener (it connects when
        first used)."""
        digest = hashlib.sha1(self.schema.encode()).hexdigest()[:16]
        self.journal_channel = "stageline_journal_" + digest
        self._journal_listener = Listener(
            self._db.driver, self._db.connect, self.journal_channel, "journal changes"
        )

    def _journal_written(self, statement: tuple[str, tuple[Any, ...]]) -> None:
        """Count a commit (its `statement`) that appended journal events at once: its
        NOTIFY arrives later."""
        if statement[0] == COMMIT_WITH_EVENTS:
            self._journal_listener.own_write()

    def journal_version(self) -> int:
        """A number that moves whenever any run's journal may have grown: the journal
        NOTIFYs received (from any process) plus this store's own commits with events.
        No round trip: the first call opens the listening connection (and counts one)."""
        self._db.fail_if_closed()
        return self._journal_listener.version(self._where)

    def wait_journal(self, seen: int, timeout: float) -> int:
        """Block on the journal channel until `journal_version()` differs from `seen` or
        `timeout` seconds pass; the last reading. No polling: a NOTIFY wakes it."""
        deadline = time.monotonic() + timeout
        while True:
            version = self.journal_version()
            remaining = deadline - time.monotonic()
            if version != seen or remaining <= 0:
                return version
            self._journal_listener.wait(remaining, self._where)


__all__ = ["POLL", "PgJournalVersion", "SqliteVersions", "poll_until_changed"]
