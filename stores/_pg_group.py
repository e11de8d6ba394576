"""Stage commits of a PostgresStore: alone, or grouped with other runs' in one transaction.

The store's `commit` hands its checked statement to a `GroupCommit` (stores/_group.py): a
commit with no company is its one autocommit statement on a pooled connection, as it
always was; commits of different runs arriving while one is being written share the next
transaction on one connection, sent as one pipeline (BEGIN, the statements, COMMIT: one
round trip), so one WAL flush (synchronous_commit=on) makes all of them durable.

Row locks: a group writes its runs in run id order (code point order, as `COLLATE "C"`),
and `renew_leases` locks its rows in the same order, so two groups (of two daemons) or a
group and a renewal cannot deadlock. A group the server still picks as a deadlock's
victim (some other writer) was rolled back whole and is sent again.

The pipeline has no savepoints: a commit's statement reports a conflict by matching no
row, which leaves the transaction usable, so a conflicting member simply gets its
ConflictError. Any other error the server gives one statement (a refusal for good,
SQLSTATE class 22 or 23; a trigger's error; a row lock held by another session for
longer than GROUP_LOCK_TIMEOUT_MS) aborts the pipeline's transaction: it is rolled back,
and the group is written again one statement at a time, each under a savepoint of its
own, in one pass: the refused members get CommitRefused, a member with another error of
its own StoreError, and the others are written without them. A failure of the whole
transaction (the connection lost, the COMMIT failing) fails every member with
StoreError, which says whether none was written or, for a connection lost after the
group was sent, the outcome is unknown (each run's version tells, as for a lone commit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from stageline.core.errors import ConflictError, StoreError
from stageline.core.store import Commit

from . import _pg_admission as admission
from . import _pg_sql as sql
from ._common import commit_refused, conflict
from ._group import GroupCommit, Member, fail_unwritten
from ._pg_driver import reason

if TYPE_CHECKING:
    from ._pg_pool import Connection, Connections

Statement = tuple[str, tuple[Any, ...]]
_DEADLOCK_DETECTED = "40P01"
_DEADLOCK = object()  # the group was a deadlock's victim: rolled back, try it again
_DEADLOCK_RETRIES = 3  # then one statement at a time, under savepoints (a deadlock there fails it)
GROUP_LOCK_TIMEOUT_MS = 5000
"""How long a group waits for a row lock another session holds before that member fails."""


class PgGroupCommit:
    """`group_stats` and the writing of a PostgresStore's commits, alone or in groups."""

    _db: Connections
    _group: GroupCommit

    def group_stats(self) -> dict[str, int]:
        """Group commits so far: transactions ("groups"), commits in them, largest group."""
        return self._group.stats()

    def _commit_alone(self, item: tuple[Commit, Statement]) -> int:
        commit, statement = item
        with self._db.connection(f"committing run {commit.run_id!r}", refusing=True) as conn:
            return admission.apply_commit(conn, self._db.sql, commit, statement)

    def _write_group(self, members: list[Member]) -> None:
        """Write a group: alone as ever, or in one transaction (see the module)."""
        if len(members) == 1:
            members[0].settle(self._commit_alone)
            return
        pending = sorted(members, key=lambda member: member.item[0].run_id)
        for _ in range(_DEADLOCK_RETRIES):
            outcome = self._try_pipelined(pending)
            if outcome is True:
                return
            if outcome is False:  # a refusal: one statement at a time finds whose
                break
        self._try_group(pending)

    def _try_pipelined(self, members: list[Member]) -> object:
        """The group as one pipeline: BEGIN, the statements and COMMIT in one round trip.
        True once it is settled; False if the server refused a statement (nothing was
        written: write the group one statement at a time, which finds which); _DEADLOCK
        if the server chose it as a deadlock's victim (nothing written: try again)."""
        with self._group_connection(members) as conn:
            try:
                with conn.pipeline(), conn.transaction():
                    conn.execute(self._lock_timeout())
                    cursors = [
                        conn.execute(self._db.sql(m.item[1][0]), m.item[1][1]) for m in members
                    ]
            except self._db.driver.Error as exc:
                if _sqlstate(exc) == _DEADLOCK_DETECTED:
                    return _DEADLOCK
                if self._statement_error(conn, exc):  # rolled back: find whose, one at a time
                    return False
                raise
            self._settle(conn, members, cursors)
        return True

    def _settle(self, conn: Connection, members: list[Member], cursors: list[Any]) -> None:
        """Each member's verdict from its statement's cursor, once the group committed."""
        for member, cursor in zip(members, cursors, strict=True):
            row = cursor.fetchone()
            if row is None:  # matched no row: its conflict (it wrote nothing)
                member.fail(self._conflict(conn, member.item[0]))
            else:
                member.succeed(int(row[0]))

    def _try_group(self, members: list[Member]) -> None:
        """One transaction of `members`, each statement under a savepoint of its own: a
        conflict, refusal or other error of its own settles that member alone; the rest
        are told once committed."""
        applied: dict[Member, int] = {}
        with self._group_connection(members) as conn:
            with conn.transaction():
                conn.execute(self._lock_timeout())
                for member in members:
                    self._apply(conn, member, applied)
            for member, version in applied.items():  # told only once committed
                member.succeed(version)

    @contextmanager
    def _group_connection(self, members: list[Member]) -> Iterator[Connection]:
        """A pooled connection to write `members` together on. If that fails, each member
        without a verdict of its own gets StoreError, saying that none was written or, if
        the connection was lost after the group was sent, that nobody knows."""
        lost = False
        try:
            with self._db.connection(f"committing {len(members)} runs together") as conn:
                try:
                    yield conn
                except self._db.driver.Error:
                    lost = conn.broken
                    raise
        except StoreError as exc:
            fail_unwritten(members, StoreError(f"{exc} ({_outcome(lost)})"))

    def _lock_timeout(self) -> Any:
        """`SET LOCAL lock_timeout` for a group's transaction: a run row another session
        holds locked fails that member (StoreError), not every commit of this process."""
        return self._db.sql(f"SET LOCAL lock_timeout = '{GROUP_LOCK_TIMEOUT_MS}ms'")

    def _conflict(self, conn: Connection, commit: Commit) -> ConflictError:
        """The ConflictError of a commit whose statement matched no row (the version
        found is only for its message: unknown if it cannot be read)."""
        try:
            found = conn.execute(self._db.sql(sql.VERSION_OF), (commit.run_id,)).fetchone()
        except self._db.driver.Error:
            found = None
        return conflict(commit.run_id, commit.expected_version, None if found is None else found[0])

    def _statement_error(self, conn: Connection, exc: BaseException) -> bool:
        """Whether `exc` is about one statement, the connection still usable: the server's
        answer to it (a refusal, a trigger's error, a lock timeout), or a value the driver
        refused to send (a NUL in text: a DataError with no SQLSTATE); not a lost
        connection."""
        if conn.broken:
            return False
        refused = (self._db.driver.DataError, self._db.driver.IntegrityError)
        return _sqlstate(exc) is not None or isinstance(exc, refused)

    def _apply(self, conn: Connection, member: Member, applied: dict[Member, int]) -> None:
        """One member's statement inside the group's transaction (its new version into
        `applied`; a conflict, refusal or other error of its statement settles it now)."""
        commit, statement = member.item
        try:
            with conn.transaction():  # a savepoint: an error rolls back this member alone
                applied[member] = admission.apply_commit(conn, self._db.sql, commit, statement)
        except ConflictError as exc:
            member.fail(exc)
        except self._db.driver.Error as exc:
            if not self._statement_error(conn, exc):
                raise  # the connection is gone: the whole group fails
            where = f"the PostgreSQL store {self._db.where}"
            what = f"committing run {commit.run_id!r}"
            if isinstance(exc, (self._db.driver.DataError, self._db.driver.IntegrityError)):
                member.fail(commit_refused(what, where, reason(exc)))
            else:
                member.fail(StoreError(f"{what} failed in {where}: {reason(exc)}"))


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


def _outcome(lost: bool) -> str:
    """What a failed group's members are told about their commits: none is written, or,
    if the connection was lost after the group was sent, nobody knows."""
    if not lost:
        return "none of the group's commits is written"
    return (
        "the connection was lost after the group was sent, so whether its commits were "
        "written is unknown: each run's version tells, and a writer that guessed wrong "
        "gets ConflictError at its next commit"
    )


__all__ = ["PgGroupCommit"]
