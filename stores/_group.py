"""Group commit: stage commits of different runs that arrive together share one transaction.

Leader and followers, no thread of its own. A caller queues its commit; if no group is
being written it becomes the leader: it takes everything queued so far (up to `cap`),
has the store write it as one transaction (one fsync on SQLite, one WAL flush on
PostgreSQL) and wakes each member with its own verdict. Callers that queue while a group
is being written wait; when the group is written, leadership passes to the first of
them, which writes the next group with everything queued by then. So a caller never
writes another group after its own is durable, and a commit with no company is written
at once, by its own thread, exactly as without grouping (no delay waiting for others).

The store's `write(members)` settles every member (`Member.value` or `Member.error`); a
member it left unsettled (a bug, an interrupt) is failed with StoreError, and leadership
passes on whatever happened, so no caller waits for ever.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from stageline.core.errors import StoreError

CAP: Final = 256
"""The most commits written in one group."""


class Member:
    """One caller's commit in a group: its `item` (what the store needs to write it),
    then its verdict: `value` (the run's new version) or `error`."""

    __slots__ = ("error", "item", "leads", "settled", "value", "woken")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.value: Any = None
        self.error: BaseException | None = None
        self.settled = False
        self.leads = False  # woken to write the next group, not with a verdict
        self.woken = threading.Event()

    def settle(self, write: Callable[[Any], Any]) -> None:
        """The verdict of `write(item)`: its result, or the exception it raised."""
        try:
            self.succeed(write(self.item))
        except Exception as exc:
            self.fail(exc)

    def succeed(self, value: Any) -> None:
        self.value, self.error, self.settled = value, None, True

    def fail(self, error: BaseException) -> None:
        self.error, self.settled = error, True

    def verdict(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def fail_unwritten(members: list[Member], error: StoreError) -> None:
    """The group's transaction failed, so nothing of it was written: `error` for each
    member that had no verdict or was to succeed (a conflict or refusal keeps its own)."""
    for member in members:
        if not member.settled or member.error is None:
            member.fail(error)


class GroupCommit:
    """The queue of commits waiting to be written, and who writes them (see the module)."""

    def __init__(self, write: Callable[[list[Member]], None], cap: int = CAP) -> None:
        self._write = write
        self._cap = cap
        self._lock = threading.Lock()
        self._queue: deque[Member] = deque()
        self._writing = False  # a leader holds the queue; False only while it is empty
        self.groups = 0
        self.commits = 0
        self.largest = 0

    def submit(self, item: Any) -> Any:
        """Write `item` with whatever commits are queued with it: its verdict, once the
        transaction holding it is durable (or failed)."""
        member = Member(item)
        with self._lock:
            self._queue.append(member)
            leads = not self._writing
            self._writing = True
        if not leads:
            try:
                member.woken.wait()
            except BaseException:  # interrupted while waiting: leave, or pass the lead on
                self._leave(member)
                raise
            if not member.leads:
                return member.verdict()
        self._lead()
        return member.verdict()

    def _leave(self, member: Member) -> None:
        """A waiting caller gave up (an interrupt): take its commit out of the queue (it is
        not written) and, if it had been made the next leader, pass the lead on. A commit
        already taken into a group is written or failed by that group's leader."""
        with self._lock:
            if member not in self._queue:
                return
            self._queue.remove(member)
            heir = member.leads
        if heir:
            self._pass_on()

    def _lead(self) -> None:
        """Write one group (this caller's commit is its first member), then pass on."""
        with self._lock:
            group = [self._queue.popleft() for _ in range(min(self._cap, len(self._queue)))]
            self.groups += 1
            self.commits += len(group)
            self.largest = max(self.largest, len(group))
        try:
            self._write(group)
        except BaseException:  # interrupted mid-way: no verdict of this group can be trusted
            for member in group:
                member.fail(StoreError("the group commit holding this commit was interrupted; "
                                       "its outcome is unknown: read the run"))  # fmt: skip
            raise
        finally:
            try:
                for member in group:
                    if not member.settled:
                        member.fail(
                            StoreError("the group commit holding this commit was not written")
                        )
                    member.woken.set()
            finally:
                self._pass_on()

    def _pass_on(self) -> None:
        """Leadership to the first waiter, or none (the queue is empty)."""
        with self._lock:
            if not self._queue:
                self._writing = False
                return
            heir = self._queue[0]
            heir.leads = True  # under the lock: a waiter leaving (_leave) sees it
        heir.woken.set()

    def stats(self) -> dict[str, int]:
        """Groups written, commits written in them, and the largest group so far."""
        with self._lock:
            return {"groups": self.groups, "commits": self.commits, "largest": self.largest}


__all__ = ["CAP", "GroupCommit", "Member", "fail_unwritten"]
