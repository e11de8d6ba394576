"""Stage commits and new runs of a SqliteStore: alone, or grouped in one transaction.

The store's `commit` and `create_run` hand their encoded write to a `GroupCommit`
(stores/_group.py): a write with no company runs exactly as a lone `BEGIN IMMEDIATE ...
COMMIT` always has; writes arriving while one is being written share the next
transaction, so one fsync of the WAL (synchronous=FULL) makes all of them durable. A
daemon starting runs while others commit stages therefore pays no fsync of its own per
new run. A group is applied in a fast pass or, if a member conflicts or is refused or
two members write one run, in a careful pass with a savepoint per member
(stores/_sqlite_writes.py), so one run's conflict, refusal or existing id fails that
write alone; a group whose COMMIT fails fails every member with StoreError and writes
none. Each caller returns only once its own write is durable.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import AbstractContextManager
from typing import Any

from stageline.core.codec import encode
from stageline.core.errors import StoreError
from stageline.core.store import Commit, RunRecord

from . import _sqlite_ops as ops
from . import _sqlite_writes as writes
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
        return int(self._group.submit(writes.commit_write(commit, ops.encoded(commit, self._fits))))

    def create_run(self, record: RunRecord) -> None:
        """Write the new run's record, grouped like a commit; RunExistsError if its id is
        taken (that write alone fails)."""
        state = self._fits(record.run_id, "state", encode(record.state))
        self._group.submit(writes.run_write(record, state))

    def group_stats(self) -> dict[str, int]:
        """Group commits so far: transactions ("groups"), commits in them, largest group."""
        return self._group.stats()

    def _write_alone(self, write: writes.Write) -> Any:
        with self._transaction(write.what, refusing=True, journal=bool(write.events)) as db:
            return writes.apply_write(db, write)

    def _write_group(self, members: list[Member]) -> None:
        """Write a group: alone as ever, or together in one transaction where one
        member's conflict or refusal fails it alone (stores/_sqlite_writes.py). If the
        transaction fails, none is written and each gets StoreError."""
        if len(members) == 1:
            members[0].settle(self._write_alone)
            return
        with self._lock:
            try:
                if self._closed:
                    raise StoreError(f"SQLite store {self.path!r} is closed")
                applied = self._apply_group(members)
                self._db.execute("COMMIT")
            except BaseException as exc:  # an interrupt too: never leave BEGIN open
                self._rollback()
                error = StoreError(
                    f"writing {len(members)} runs together failed in {self.path!r}: "
                    f"{exc}; none of these writes was written"
                )
                fail_unwritten(members, error)
                if not isinstance(exc, Exception):
                    raise
                return
            for member, result in applied.items():  # told only once durable
                member.succeed(result)
            self._journal_writes += sum(m.error is None and bool(m.item.events) for m in members)

    def _apply_group(self, members: list[Member]) -> dict[Member, Any]:
        """Open the transaction and apply the group in it, fast or, if the fast pass
        cannot settle it, carefully (stores/_sqlite_writes.py): each applied member's
        result."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            applied, wrote_nothing = writes.apply_fast(self._db, members)
        except Exception:
            self._rollback()
            self._db.execute("BEGIN IMMEDIATE")
            return writes.apply_careful(self._db, members, self._refusal)
        for member, exc in wrote_nothing.items():
            member.fail(exc)
        return applied

    def _refusal(self, what: str, exc: Exception) -> BaseException:
        """What one member's failure inside a group is for its own caller."""
        return self._failure(what, exc, refusing=True) or exc


__all__ = ["SqliteGroupCommit"]
