"""Stage commits of a SqliteStore: alone, or grouped with other runs' in one transaction.

The store's `commit` hands its encoded commit to a `GroupCommit` (stores/_group.py): a
commit with no company runs exactly as a lone `BEGIN IMMEDIATE ... COMMIT` always has;
commits of different runs arriving while one is being written share the next
transaction, so one fsync of the WAL (synchronous=FULL) makes all of them durable.
Inside a group each commit runs under a savepoint of its own, so one run's conflict or
refusal fails that run alone; a group whose COMMIT fails fails every member with
StoreError and writes none. Each caller returns only once its own commit is durable.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import AbstractContextManager

from stageline.core.errors import StoreError
from stageline.core.store import Commit

from . import _sqlite_ops as ops
from ._group import GroupCommit, Member, fail_unwritten


class SqliteGroupCommit:
    """`commit` and `group_stats` of a SqliteStore (the store provides the rest)."""

    path: str
    _db: sqlite3.Connection
    _lock: threading.Lock
    _closed: bool
    _group: GroupCommit
    _journal_writes: int

    def _transaction(
        self, what: str, refusing: bool = False, journal: bool = False
    ) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _failure(self, what: str, exc: BaseException, refusing: bool) -> StoreError | None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _fits(self, run_id: str, what: str, data: bytes) -> bytes:
        raise NotImplementedError

    def commit(self, commit: Commit) -> int:
        """Write the stage commit, with those of other runs arriving at the same moment
        in one transaction (stores/_group.py); returns once it is durable."""
        return int(self._group.submit((commit, ops.encoded(commit, self._fits))))

    def group_stats(self) -> dict[str, int]:
        """Group commits so far: transactions ("groups"), commits in them, largest group."""
        return self._group.stats()

    def _commit_alone(self, item: tuple[Commit, ops.Encoded]) -> int:
        commit, data = item
        what = f"committing run {commit.run_id!r}"
        with self._transaction(what, refusing=True, journal=bool(data[1])) as db:
            return ops.apply_commit(db, commit, data)

    def _write_group(self, members: list[Member]) -> None:
        """Write a group of commits (of different runs): alone as ever, or together in one
        transaction, each under a savepoint so one's conflict or refusal fails it alone.
        If the transaction fails, none is written and each gets StoreError."""
        if len(members) == 1:
            members[0].settle(self._commit_alone)
            return
        with self._lock:
            try:
                if self._closed:
                    raise StoreError(f"SQLite store {self.path!r} is closed")
                self._db.execute("BEGIN IMMEDIATE")
                versions = ops.apply_group(self._db, members, self._refusal)
                self._db.execute("COMMIT")
            except BaseException as exc:  # an interrupt too: never leave BEGIN open
                self._rollback()
                error = StoreError(
                    f"committing {len(members)} runs together failed in {self.path!r}: "
                    f"{exc}; none of these commits was written"
                )
                fail_unwritten(members, error)
                if not isinstance(exc, Exception):
                    raise
                return
            for member, version in versions.items():  # told only once durable
                member.succeed(version)
            self._journal_writes += sum(m.error is None and bool(m.item[1][1]) for m in members)

    def _refusal(self, commit: Commit, exc: Exception) -> BaseException:
        """What one member's failure inside a group is for its own caller."""
        return self._failure(f"committing run {commit.run_id!r}", exc, refusing=True) or exc


__all__ = ["SqliteGroupCommit"]
