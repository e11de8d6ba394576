"""What a group holds and how it is applied: a SqliteStore groups new runs with stage
commits, and a group with nothing refused is written in its fast pass (no savepoints,
its journal in one INSERT), while a refused member sends the group to the careful pass,
where it fails alone.

Groups are made deterministic as in test_group_commit: the first write is held until
the others are queued behind it.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_group_commit import (  # noqa: F401
    HeldGroups,
    _calls,
    grown,
    new_run,
    stage_commit,
    store,
)

from stageline.core.errors import CommitRefused, ConflictError, RunExistsError
from stageline.core.events import stage_event
from stageline.core.store import RunRecord
from stageline.stores import SqliteStore

pytestmark = pytest.mark.timeout(60)


def success_event(run_id: str, seq: int) -> Any:
    return stage_event("stage:success", run_id, "p", (), "s1", seq, 1.0)


def test_new_runs_share_a_group_with_commits_and_a_taken_id_fails_alone(tmp_path: Any) -> None:
    sqlite = SqliteStore(tmp_path / "group.db")  # a PostgresStore writes new runs alone
    new_run(sqlite, "old")
    before = sqlite.group_stats()
    held = HeldGroups(sqlite, 4)

    def create(run_id: str) -> None:
        sqlite.create_run(RunRecord(run_id, "p", 1, "pending", {"fresh": run_id}, "s1"))

    futures = held.run(
        lambda: sqlite.commit(stage_commit("old", 0)),
        [lambda: create("new-1"), lambda: create("old"), lambda: create("new-2"),
         lambda: sqlite.commit(stage_commit("old", 1))],
    )  # fmt: skip
    assert futures[0].result(timeout=30) == 1
    with pytest.raises(RunExistsError, match="old"):
        futures[2].result(timeout=30)
    for i in (1, 3):
        assert futures[i].result(timeout=30) is None
    assert futures[4].result(timeout=30) == 2
    assert grown(sqlite, before) == {"groups": 2, "commits": 5}
    assert sqlite.get_run("new-1").state == {"fresh": "new-1"}
    assert sqlite.get_run("new-2").status == "pending"
    assert sqlite.get_run("old").state == {"n": 2, "run": "old"}  # not replaced by the create
    sqlite.close()


def test_a_group_of_stage_commits_is_one_update_and_one_insert(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stageline.stores import _sqlite_writes

    sqlite = SqliteStore(tmp_path / "group.db")
    ids = [f"run-{i}" for i in range(9)]
    for run_id in ids:
        new_run(sqlite, run_id)

    def no_careful_pass(*args: Any) -> None:
        raise AssertionError("nothing was refused: the group must not need its careful pass")

    monkeypatch.setattr(_sqlite_writes, "apply_careful", no_careful_pass)
    commits = [stage_commit(r, 0, events=(success_event(r, 1),)) for r in ids]
    counted = CountedStatements(sqlite)
    held = HeldGroups(sqlite, len(ids) - 1, on_second=counted.start)
    futures = held.run(*_calls(sqlite, commits))
    assert [f.result(timeout=30) for f in futures] == [1] * len(ids)
    assert counted.verbs == ["BEGIN", "UPDATE", "INSERT", "COMMIT"]  # the group of eight
    for run_id in ids:
        assert store_view(sqlite, run_id) == ({"n": 1, "run": run_id}, [1], 1)
    sqlite.close()


def test_a_conflict_in_a_group_fails_that_run_alone(tmp_path: Any) -> None:
    sqlite = SqliteStore(tmp_path / "group.db")
    ids = [f"run-{i}" for i in range(5)]
    for run_id in ids:
        new_run(sqlite, run_id)
    commits = [stage_commit(r, 0, events=(success_event(r, 1),)) for r in ids]
    commits[3] = stage_commit(ids[3], 7, events=(success_event(ids[3], 1),))
    held = HeldGroups(sqlite, len(ids) - 1)
    futures = held.run(*_calls(sqlite, commits))
    with pytest.raises(ConflictError, match="expected version 7"):
        futures[3].result(timeout=30)
    for i in (0, 1, 2, 4):
        assert futures[i].result(timeout=30) == 1
        assert store_view(sqlite, ids[i]) == ({"n": 1, "run": ids[i]}, [1], 1)
    assert store_view(sqlite, ids[3]) == ({"n": 0}, [], 0)
    sqlite.close()


class CountedStatements:
    """Records the first word of every statement the store runs, once `start` is called."""

    def __init__(self, sqlite: SqliteStore) -> None:
        self.sqlite = sqlite
        self.verbs: list[str] = []

    def start(self) -> None:
        db = self.sqlite._db
        verbs = self.verbs

        class Counting:
            def execute(self, sql: str, *args: Any) -> Any:
                verbs.append(sql.split()[0])
                return db.execute(sql, *args)

            def __getattr__(self, name: str) -> Any:
                return getattr(db, name)

        self.sqlite._db = Counting()


def store_view(store: Any, run_id: str) -> tuple[Any, list[int], int]:  # noqa: F811
    """A run's state, its journal's seqs and its version."""
    seqs = [e.seq for e in store.read_events(run_id)]
    return store.get_run(run_id).state, seqs, store.load_run(run_id).version


def test_a_refused_journal_row_fails_its_run_alone(store: Any) -> None:  # noqa: F811
    ids = [f"run-{i}" for i in range(5)]
    for run_id in ids:
        new_run(store, run_id)
    assert store.commit(stage_commit(ids[2], 0, events=(success_event(ids[2], 1),))) == 1
    commits = [stage_commit(r, 0, events=(success_event(r, 1),)) for r in ids]
    commits[2] = stage_commit(ids[2], 1, events=(success_event(ids[2], 1),))  # seq 1 again
    held = HeldGroups(store, len(ids) - 1)
    futures = held.run(*_calls(store, commits))
    with pytest.raises(CommitRefused):
        futures[2].result(timeout=30)
    for i in (0, 1, 3, 4):
        assert futures[i].result(timeout=30) == 1
        assert [e.seq for e in store.read_events(ids[i])] == [1]
        assert store.get_run(ids[i]).state == {"n": 1, "run": ids[i]}
    assert store.load_run(ids[2]).version == 1  # the refused commit wrote nothing
    assert [e.seq for e in store.read_events(ids[2])] == [1]


def test_two_writers_of_one_run_in_a_group_are_applied_in_the_order_they_came(
    store: Any,  # noqa: F811
) -> None:
    for run_id in ("lead", "A", "B"):
        new_run(store, run_id)
    new_owner = stage_commit("A", 0, owner="new", lease_until=99.0, state={"who": "new"})
    stale = stage_commit("A", 0, state={"who": "stale"})
    commits = [stage_commit("lead", 0), new_owner, stale, stage_commit("B", 0)]
    futures = HeldGroups(store, 3).run(*_calls(store, commits))
    assert futures[1].result(timeout=30) == 1  # the first to come wins
    with pytest.raises(ConflictError, match="another writer took the run"):
        futures[2].result(timeout=30)
    assert futures[3].result(timeout=30) == 1
    record = store.load_run("A")
    assert (record.state, record.owner, record.version) == ({"who": "new"}, "new", 1)
