"""Group commit on SqliteStore and PostgresStore: commits of different runs share one
transaction, each keeps its own compare-and-set, and a failed transaction fails them all.

Groups are made deterministic: the first (lone) commit's write is held on an event until
the other threads' commits are queued behind it (a queue that counts its arrivals), so
they all go in the next group together.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from conftest import drop_schema

from stageline.core.errors import CommitRefused, ConflictError, StateTooLarge, StoreError
from stageline.core.store import Commit, RunRecord
from stageline.stores import PostgresStore, SqliteStore

pytestmark = pytest.mark.timeout(60)

FOLLOWERS = 12


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param == "sqlite":
        made: Any = SqliteStore(tmp_path / "group.db", max_state_bytes=4096)
        yield made
        made.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    schema = f"stageline_group_{uuid.uuid4().hex[:12]}"
    made = PostgresStore(dsn, schema=schema, max_state_bytes=4096)
    made.test_schema = (dsn, schema)
    try:
        yield made
    finally:
        made.close()
        drop_schema(dsn, schema)


def new_run(store: Any, run_id: str) -> None:
    store.create_run(RunRecord(run_id, "p", 1, "running", {"n": 0}, "s1"))


def grown(store: Any, before: dict[str, int]) -> dict[str, int]:
    """Groups and commits written since `before` (a SqliteStore groups new runs too)."""
    after = store.group_stats()
    return {key: after[key] - before[key] for key in ("groups", "commits")}


def stage_commit(run_id: str, version: int, **changes: Any) -> Commit:
    values: dict[str, Any] = dict(
        run_id=run_id, expected_version=version, status="running", stage="s2",
        state={"n": version + 1, "run": run_id}, last_seq=0, stage_runs=version + 1,
        updated_at=1.0,
    )  # fmt: skip
    values.update(changes)
    return Commit(**values)


class CountingQueue(deque):  # type: ignore[type-arg]
    """The group's queue, releasing `arrived` once per commit queued."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Semaphore(0)

    def append(self, item: Any) -> None:
        super().append(item)
        self.arrived.release()


class HeldGroups:
    """Holds the store's first group write until `followers` more commits are queued."""

    def __init__(self, store: Any, followers: int, on_second: Callable[[], None] = lambda: None):
        self.group = store._group
        self.queue = CountingQueue()
        self.group._queue = self.queue
        self.write = self.group._write
        self.group._write = self._held_write
        self.followers = followers
        self.on_second = on_second
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def _held_write(self, members: list[Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(30), "the test never released the first group"
        if self.calls == 2:
            self.on_second()
        self.write(members)

    def run(self, first: Callable[[], Any], others: list[Callable[[], Any]]) -> list[Future[Any]]:
        """`first` alone (held), then `others` queued behind it; their futures."""
        with ThreadPoolExecutor(max_workers=len(others) + 1) as pool:
            lead = pool.submit(first)
            assert self.entered.wait(30)
            assert self.queue.arrived.acquire(timeout=30)  # the first one's own arrival
            futures = [pool.submit(call) for call in others]
            for _ in others:
                assert self.queue.arrived.acquire(timeout=30), "a commit never queued"
            self.release.set()
            return [lead, *futures]


def test_commits_of_many_runs_share_one_group(store: Any) -> None:
    ids = [f"run-{i}" for i in range(FOLLOWERS + 1)]
    for run_id in ids:
        new_run(store, run_id)
    before = store.group_stats()
    held = HeldGroups(store, FOLLOWERS)
    calls = [lambda r=run_id: store.commit(stage_commit(r, 0)) for run_id in ids]
    futures = held.run(calls[0], calls[1:])
    assert [f.result(timeout=30) for f in futures] == [1] * len(ids)
    assert grown(store, before) == {"groups": 2, "commits": len(ids)}
    assert store.group_stats()["largest"] == FOLLOWERS
    for run_id in ids:
        info = store.get_run(run_id)
        assert (info.state, info.stage) == ({"n": 1, "run": run_id}, "s2")


def test_many_threads_committing_at_once_all_land(store: Any) -> None:
    threads, rounds = 8, 15
    for t in range(threads):
        new_run(store, f"t{t}")
    barrier = threading.Barrier(threads)
    before = store.group_stats()

    def drive(t: int) -> list[int]:
        barrier.wait(10)
        return [store.commit(stage_commit(f"t{t}", v)) for v in range(rounds)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(drive, range(threads)))
    assert results == [list(range(1, rounds + 1))] * threads
    stats = grown(store, before)
    assert stats["commits"] == threads * rounds and stats["groups"] <= stats["commits"]
    for t in range(threads):
        assert store.get_run(f"t{t}").state == {"n": rounds, "run": f"t{t}"}
        assert store.load_run(f"t{t}").version == rounds


def test_a_conflict_or_refusal_in_a_group_fails_that_run_alone(store: Any) -> None:
    ids = [f"run-{i}" for i in range(6)]
    for run_id in ids:
        new_run(store, run_id)
    commits = [stage_commit(run_id, 0) for run_id in ids]
    commits[2] = stage_commit(ids[2], 5)  # a stale writer: wrong expected version
    commits[4] = stage_commit(ids[4], 0, last_seq=2**70)  # no integer column holds it
    commits[5] = stage_commit(ids[5], 0, stage_runs=2**70)  # a second refusal, same group
    held = HeldGroups(store, len(ids) - 1)
    futures = held.run(*_calls(store, commits))
    with pytest.raises(ConflictError, match="expected version 5 but the store has 0"):
        futures[2].result(timeout=30)
    for i in (4, 5):
        with pytest.raises(CommitRefused):
            futures[i].result(timeout=30)
    for i in (0, 1, 3):
        assert futures[i].result(timeout=30) == 1
        assert store.get_run(ids[i]).state == {"n": 1, "run": ids[i]}
    for i in (2, 4, 5):
        assert store.load_run(ids[i]).version == 0
        assert store.get_run(ids[i]).state == {"n": 0}
    assert store.group_stats()["largest"] == len(ids) - 1


def test_an_oversized_state_is_refused_before_it_joins_a_group(store: Any) -> None:
    new_run(store, "big")
    before = store.group_stats()
    with pytest.raises(StateTooLarge):
        store.commit(stage_commit("big", 0, state={"blob": "x" * 10_000}))
    assert grown(store, before)["commits"] == 0
    assert store.commit(stage_commit("big", 0)) == 1


def test_a_failed_group_transaction_fails_every_member_and_writes_none(store: Any) -> None:
    ids = [f"run-{i}" for i in range(5)]
    for run_id in ids:
        new_run(store, run_id)
    held = HeldGroups(store, len(ids) - 1, on_second=lambda: _break_commit(store))
    futures = held.run(*_calls(store, [stage_commit(run_id, 0) for run_id in ids]))
    assert futures[0].result(timeout=30) == 1  # the lone first commit, before the fault
    for future in futures[1:]:
        with pytest.raises(StoreError) as raised:
            future.result(timeout=30)
        assert not isinstance(raised.value, (ConflictError, CommitRefused))
    for run_id in ids[1:]:
        assert store.load_run(run_id).version == 0
        assert store.read_events(run_id) == []
    _mend_commit(store)
    assert store.commit(stage_commit(ids[1], 0)) == 1  # the store goes on


def _calls(store: Any, commits: list[Commit]) -> tuple[Callable[[], Any], list[Callable[[], Any]]]:
    calls = [lambda c=commit: store.commit(c) for commit in commits]
    return calls[0], calls[1:]


class _FailingCommit:
    """A SQLite connection whose COMMIT fails (as on a full disk), everything else passing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full (simulated)")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


_FAIL_AT_COMMIT = """
CREATE FUNCTION {s}.fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'commit refused by a test trigger (simulated failure)'; END $$;
CREATE CONSTRAINT TRIGGER fail_at_commit AFTER UPDATE ON {s}.runs
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.fail_at_commit();
"""


def _break_commit(store: Any) -> None:
    if isinstance(store, SqliteStore):
        store._db = _FailingCommit(store._db)
        return
    _pg_script(store, _FAIL_AT_COMMIT)


def _mend_commit(store: Any) -> None:
    if isinstance(store, SqliteStore):
        store._db = store._db.db
        return
    _pg_script(store, "DROP TRIGGER fail_at_commit ON {s}.runs")


def _pg_script(store: Any, script: str) -> None:
    import psycopg

    dsn, schema = store.test_schema
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script.replace("{s}", f'"{schema}"'))


# --- interrupts (KeyboardInterrupt, SystemExit) ------------------------------------------


def test_a_follower_interrupted_while_waiting_does_not_stall_later_commits(monkeypatch):
    from stageline.stores import _group

    written: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def write(members: list[Any]) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        for member in members:
            written.append(member.item)
            member.succeed(member.item)

    class Interrupted(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt

    class InterruptedMember(_group.Member):
        def __init__(self, item: Any) -> None:
            super().__init__(item)
            self.woken = Interrupted()

    group = _group.GroupCommit(write)
    with ThreadPoolExecutor(max_workers=1) as pool:
        lead = pool.submit(group.submit, "a")
        assert entered.wait(30)
        monkeypatch.setattr(_group, "Member", InterruptedMember)
        with pytest.raises(KeyboardInterrupt):
            group.submit("b")  # queued behind "a", then interrupted while it waits
        monkeypatch.undo()
        release.set()
        assert lead.result(timeout=30) == "a"
    assert group.submit("c") == "c"  # no stall: the interrupted waiter left the queue
    assert written == ["a", "c"]


def test_an_interrupt_inside_a_sqlite_group_tells_no_one_it_was_written(tmp_path, monkeypatch):
    from stageline.stores import _sqlite_writes

    store = SqliteStore(tmp_path / "group.db")
    ids = [f"run-{i}" for i in range(5)]
    for run_id in ids:
        new_run(store, run_id)

    def interrupted(db: Any, rows: Any) -> None:  # after the group's rows were updated
        raise KeyboardInterrupt

    held = HeldGroups(store, len(ids) - 1, on_second=lambda: monkeypatch.setattr(
        _sqlite_writes, "insert_events", interrupted))  # fmt: skip
    futures = held.run(*_calls(store, [stage_commit(run_id, 0) for run_id in ids]))
    assert futures[0].result(timeout=30) == 1  # the lone first group, before the interrupt
    for future in futures[1:]:  # the group's leader sees the interrupt, the others a failure
        with pytest.raises((StoreError, KeyboardInterrupt)):
            future.result(timeout=30)
    monkeypatch.undo()
    for run_id in ids[1:]:  # none of the group was written, and the store goes on
        assert store.load_run(run_id).version == 0
    assert store.commit(stage_commit(ids[2], 0)) == 1
    other = SqliteStore(tmp_path / "group.db")  # no write transaction left open
    assert other.commit(stage_commit(ids[3], 0)) == 1
    other.close()
    store.close()
