"""A PostgresStore group whose member meets an error of its own (a trigger's, a row lock
held elsewhere) fails that member alone; a group whose connection is lost says its
outcome is unknown rather than that nothing was written.

Groups are made deterministic as in test_group_commit: the first write is held until
the others are queued behind it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import drop_schema
from test_group_commit import HeldGroups, _calls, _pg_script, new_run, stage_commit

from stageline.core.errors import CommitRefused, ConflictError, StoreError
from stageline.stores import PostgresStore

pytestmark = pytest.mark.timeout(60)

_RAISE_FOR_RUN_2 = """
CREATE FUNCTION {s}.refuse_run_2() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN
  IF NEW.run_id = 'run-2' THEN RAISE EXCEPTION 'run-2 is refused by a test trigger'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_run_2 BEFORE UPDATE ON {s}.runs
FOR EACH ROW EXECUTE FUNCTION {s}.refuse_run_2();
"""

_KILL_OWN_BACKEND = """
CREATE FUNCTION {s}.kill_own_backend() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;
CREATE TRIGGER kill_own_backend BEFORE UPDATE ON {s}.runs
FOR EACH ROW EXECUTE FUNCTION {s}.kill_own_backend();
"""


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[tuple[PostgresStore, str, str]]:
    schema = f"stageline_pgfault_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(pg_dsn, schema=schema)
    store.test_schema = (pg_dsn, schema)  # for test_group_commit's _pg_script
    try:
        yield store, pg_dsn, schema
    finally:
        store.close()
        drop_schema(pg_dsn, schema)


def _group_of(store: PostgresStore, ids: list[str]) -> list[Any]:
    """Commit version 0 of each run: the first alone, the rest together in one group."""
    commits = [stage_commit(run_id, 0) for run_id in ids]
    return HeldGroups(store, len(ids) - 1).run(*_calls(store, commits))


def test_a_trigger_error_of_one_member_fails_that_run_alone(pg: Any) -> None:
    store = pg[0]
    ids = ["run-0", "run-1", "run-2", "run-3"]
    for run_id in ids:
        new_run(store, run_id)
    _pg_script(store, _RAISE_FOR_RUN_2)
    futures = _group_of(store, ids)
    with pytest.raises(StoreError, match="run-2 is refused by a test trigger") as raised:
        futures[2].result(timeout=30)
    assert not isinstance(raised.value, (CommitRefused, ConflictError))
    for i in (0, 1, 3):
        assert futures[i].result(timeout=30) == 1
        assert store.get_run(ids[i]).state == {"n": 1, "run": ids[i]}
    assert store.load_run("run-2").version == 0


def test_a_row_locked_elsewhere_fails_its_member_after_the_lock_timeout(
    pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from stageline.stores import _pg_group

    monkeypatch.setattr(_pg_group, "GROUP_LOCK_TIMEOUT_MS", 200)
    store, dsn, schema = pg
    ids = ["run-0", "run-1", "run-2", "run-3"]
    for run_id in ids:
        new_run(store, run_id)
    with psycopg.connect(dsn) as holder:  # an open transaction holding run-2's row
        holder.execute(f'SELECT 1 FROM "{schema}".runs WHERE run_id = %s FOR UPDATE', ("run-2",))
        futures = _group_of(store, ids)
        with pytest.raises(StoreError, match="lock timeout"):
            futures[2].result(timeout=30)
        for i in (0, 1, 3):
            assert futures[i].result(timeout=30) == 1
        holder.rollback()
    assert store.load_run("run-2").version == 0
    assert store.commit(stage_commit("run-2", 0)) == 1  # the lock gone, it commits


def test_a_group_whose_connection_is_lost_says_its_outcome_is_unknown(pg: Any) -> None:
    store = pg[0]
    ids = ["run-0", "run-1", "run-2"]
    for run_id in ids:
        new_run(store, run_id)
    killed = threading.Event()

    def kill_at_second_group() -> None:
        _pg_script(store, _KILL_OWN_BACKEND)
        killed.set()

    commits = [stage_commit(run_id, 0) for run_id in ids]
    futures = HeldGroups(store, 2, on_second=kill_at_second_group).run(*_calls(store, commits))
    assert futures[0].result(timeout=30) == 1  # the lone first commit, before the trigger
    assert killed.is_set()
    for future in futures[1:]:
        with pytest.raises(StoreError, match="is unknown"):
            future.result(timeout=30)
    _pg_script(store, "DROP TRIGGER kill_own_backend ON {s}.runs")
    for run_id in ids[1:]:  # here the server rolled it back: the version tells
        assert store.load_run(run_id).version == 0
    assert store.commit(stage_commit("run-1", 0)) == 1  # the store goes on


def test_a_value_the_driver_refuses_fails_its_run_alone(pg: Any) -> None:
    from stageline.core.events import stage_event

    store, _, _ = pg
    ids = ["run-0", "run-1", "run-2", "run-3"]
    for run_id in ids:
        new_run(store, run_id)
    odd = stage_event("stage:odd\x00", "run-2", "p", (), "s1", 1, 1.0)  # no SQLSTATE: client
    commits = [stage_commit(r, 0) for r in ids]
    commits[2] = stage_commit("run-2", 0, events=(odd,))
    futures = HeldGroups(store, len(ids) - 1).run(*_calls(store, commits))
    with pytest.raises(CommitRefused):
        futures[2].result(timeout=30)
    for i in (0, 1, 3):
        assert futures[i].result(timeout=30) == 1
    assert store.load_run("run-2").version == 0
