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
ConflictError. A member the server refuses for good (SQLSTATE class 22 or 23) aborts the
pipeline's transaction: it is rolled back, and the group is written again one statement
at a time, each under a savepoint of its own, in one pass: the refused members get
CommitRefused and the others are written without them. Any other failure (the connection
lost, the COMMIT failing) fails every member with StoreError; as for a lone commit, a
connection lost while the server was committing leaves the outcome unknown, and each
run's version tells.
"""

from __future__ import annotations

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
        what = f"committing {len(members)} runs together"
        refusals = (self._db.driver.DataError, self._db.driver.IntegrityError)
        try:
            with self._db.connection(what) as conn:
                try:
                    with conn.pipeline(), conn.transaction():
                        sent = [
                            conn.execute(self._db.sql(m.item[1][0]), m.item[1][1]) for m in members
                        ]
                except refusals:
                    return False
                for member, cursor in zip(members, sent, strict=True):
                    row = cursor.fetchone()
                    if row is None:  # matched no row: its conflict (it wrote nothing)
                        member.fail(self._conflict(conn, member.item[0]))
                    else:
                        member.succeed(int(row[0]))
        except StoreError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == _DEADLOCK_DETECTED:
                return _DEADLOCK
            fail_unwritten(members, StoreError(f"{exc} (none of the group's commits is written)"))
        return True

    def _try_group(self, members: list[Member]) -> None:
        """One transaction of `members`, each statement under a savepoint of its own: a
        conflict or refusal settles that member alone; the rest are told once committed."""
        what = f"committing {len(members)} runs together"
        applied: dict[Member, int] = {}
        try:
            with self._db.connection(what) as conn, conn.transaction():
                for member in members:
                    self._apply(conn, member, applied)
            for member, version in applied.items():  # told only once committed
                member.succeed(version)
        except StoreError as exc:
            fail_unwritten(members, StoreError(f"{exc} (none of the group's commits is written)"))

    def _conflict(self, conn: Connection, commit: Commit) -> ConflictError:
        """The ConflictError of a commit whose statement matched no row (the version
        found is only for its message: unknown if it cannot be read)."""
        try:
            found = conn.execute(self._db.sql(sql.VERSION_OF), (commit.run_id,)).fetchone()
        except self._db.driver.Error:
            found = None
        return conflict(commit.run_id, commit.expected_version, None if found is None else found[0])

    def _apply(self, conn: Connection, member: Member, applied: dict[Member, int]) -> None:
        """One member's statement inside the group's transaction (its new version into
        `applied`; a conflict or refusal settles it now)."""
        commit, statement = member.item
        try:
            with conn.transaction():  # a savepoint: a refusal rolls back this member alone
                applied[member] = admission.apply_commit(conn, self._db.sql, commit, statement)
        except ConflictError as exc:
            member.fail(exc)
        except (self._db.driver.DataError, self._db.driver.IntegrityError) as exc:
            where = f"the PostgreSQL store {self._db.where}"
            what = f"committing run {commit.run_id!r}"
            member.fail(commit_refused(what, where, reason(exc)))


__all__ = ["PgGroupCommit"]
