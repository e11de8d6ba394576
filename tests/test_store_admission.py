"""Admission control in every store (SPEC section 20): `admit`, `queue`, `limit_usage`.

Each test runs on MemoryStore, SqliteStore and PostgresStore (the `store` fixture) and
checks the rules of stores/_admission.py: max_running, queued order, rate windows, slots
freed without a write, compare-and-set, retention. The races check that a limit holds at
every instant with 8 threads on one store and, for the SQL stores, 4 processes each with
its own store on one file or schema (this file run as a script is such a process).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.admission import Claim
from stageline.core.definition import Pause, Pipeline, Stage, Step
from stageline.core.errors import ConflictError
from stageline.core.store import RunRecord

pytestmark = pytest.mark.timeout(120)

PIPELINE = Pipeline(
    "lim",
    [
        Stage("a", 1, steps=[Step("a1", lambda state, ctx: None)]),
        Stage("b", 2, steps=[Step("b1", lambda state, ctx: None)]),
    ],
)
T0 = 1_700_000_000.0
RACE_LIMIT = 3


def api(max_running: int = 5, key: str = "", rate: tuple[int, float] | None = None) -> Claim:
    return Claim("api", key, max_running, rate)


def new_run(
    store: Any,
    run_id: str,
    *,
    priority: int = 0,
    created_at: float = T0,
    lease_until: float | None = None,
) -> RunRecord:
    store.create_run(
        RunRecord(
            run_id,
            PIPELINE.id,
            1,
            lifecycle.PENDING,
            {"n": 1},
            None,
            created_at=created_at,
            updated_at=created_at,
            lease_until=lease_until,
            priority=priority,
        )
    )
    record: RunRecord = store.load_run(run_id)
    return record


def start(store: Any, run_id: str, claims: Sequence[Claim], now: float) -> bool:
    """pending -> running if the claims admit it."""
    record = store.load_run(run_id)
    admitted: bool = store.admit(tr.start(record, "a", now), claims, now)
    return admitted


def enqueue(store: Any, run_id: str, claims: Sequence[Claim], now: float) -> None:
    """pending -> queued, waiting for the claims."""
    record = store.load_run(run_id)
    store.queue(tr.queue(record, tr.start(record, "a", now), now), claims)


def admit_queued(store: Any, run_id: str, claims: Sequence[Claim], now: float) -> bool:
    """queued -> running if the claims admit it."""
    record = store.load_run(run_id)
    admitted: bool = store.admit(tr.admit(record, now), claims, now)
    return admitted


def finish(store: Any, run_id: str, now: float) -> None:
    record = store.load_run(run_id)
    progress = tr.Progress(record.last_seq, record.stage_runs)
    store.commit(tr.succeed(record, now, progress, state=record.state))


def pause(store: Any, run_id: str, now: float) -> None:
    record = store.load_run(run_id)
    progress = tr.Progress(record.last_seq, record.stage_runs)
    store.commit(
        tr.pause(
            record,
            now,
            progress,
            pipeline=PIPELINE,
            stage=PIPELINE.stage("a"),
            answer=Pause("b"),
            state=record.state,
        )
    )


def usage(store: Any, now: float) -> list[tuple[str, str, int, int]]:
    return [(r["limit"], r["key"], r["running"], r["queued"]) for r in store.limit_usage(now)]


# ------------------------------------------------------------------------- the rules


def test_max_running_holds_and_a_refusal_writes_nothing(store):
    for n in range(6):
        new_run(store, f"r{n}")
    assert [start(store, f"r{n}", [api(5)], T0) for n in range(6)] == [True] * 5 + [False]
    refused = store.load_run("r5")
    assert (refused.status, refused.version) == (lifecycle.PENDING, 0)
    assert store.read_events("r5") == []
    assert store.load_run("r0").status == lifecycle.RUNNING
    assert usage(store, T0) == [("api", "", 5, 0)]
    # a run that already holds its slot is not counted against itself
    assert store.limit_usage(T0) == [{"limit": "api", "key": "", "running": 5, "queued": 0}]


def test_a_slot_frees_when_its_run_pauses_ends_or_its_lease_runs_out(store):
    one = [api(1)]
    for run_id in ("a", "b", "c", "d"):
        new_run(store, run_id, lease_until=T0 + 50 if run_id == "c" else None)
    assert start(store, "a", one, T0)
    assert not start(store, "b", one, T0)
    pause(store, "a", T0 + 1)
    assert start(store, "b", one, T0 + 1)  # a paused: its slot is free
    assert not start(store, "c", one, T0 + 1)
    finish(store, "b", T0 + 2)
    assert start(store, "c", one, T0 + 2)  # b ended
    assert not start(store, "d", one, T0 + 49.9)
    assert usage(store, T0 + 49.9) == [("api", "", 1, 0)]
    assert usage(store, T0 + 50) == []  # c's lease ran out: no write needed
    assert start(store, "d", one, T0 + 50)
    assert store.load_run("c").status == lifecycle.RUNNING
    assert usage(store, T0 + 50) == [("api", "", 1, 0)]


def test_keys_are_independent_and_every_claim_must_admit(store):
    for run_id in ("a", "b", "c", "d"):
        new_run(store, run_id)
    assert start(store, "a", [api(1, "k1")], T0)
    assert start(store, "b", [api(1, "k2")], T0)
    assert not start(store, "c", [api(1, "k1")], T0)
    other = Claim("other", "", 10)
    assert not start(store, "d", [other, api(1, "k2")], T0)  # k2 is full
    assert usage(store, T0) == [("api", "k1", 1, 0), ("api", "k2", 1, 0)]
    assert start(store, "d", [other, api(1, "k3")], T0)
    assert usage(store, T0) == [
        ("api", "k1", 1, 0), ("api", "k2", 1, 0), ("api", "k3", 1, 0), ("other", "", 1, 0),
    ]  # fmt: skip


def test_queued_runs_go_by_priority_then_age_then_run_id(store):
    one = [api(1)]
    new_run(store, "holder")
    assert start(store, "holder", one, T0)
    waiting = {
        "x-low": (0, T0 + 1),
        "x-high": (5, T0 + 3),
        "x-old": (0, T0 + 0.5),
        "x-b": (0, T0 + 0.5),  # as old as x-old: the smaller run id goes first
    }
    for run_id, (priority, created_at) in waiting.items():
        new_run(store, run_id, priority=priority, created_at=created_at)
        enqueue(store, run_id, one, T0 + 4)
    assert usage(store, T0 + 4) == [("api", "", 1, 4)]
    finish(store, "holder", T0 + 5)
    new_run(store, "late", created_at=T0 + 5)  # never queued, behind every queued run
    assert not start(store, "late", one, T0 + 5)
    expected = ["x-high", "x-b", "x-old", "x-low"]
    for step, winner in enumerate(expected):
        now = T0 + 6 + step
        for loser in reversed(expected[step + 1 :]):
            assert not admit_queued(store, loser, one, now), (winner, loser)
        assert admit_queued(store, winner, one, now)
        assert usage(store, now) == [("api", "", 1, len(expected) - step - 1)]
        finish(store, winner, now)
    assert start(store, "late", one, T0 + 20)


def test_a_higher_priority_goes_before_queued_runs(store):
    one = [api(1)]
    new_run(store, "queued", created_at=T0)
    enqueue(store, "queued", one, T0)
    new_run(store, "urgent", priority=9, created_at=T0 + 1)
    new_run(store, "plain", priority=0, created_at=T0 + 1)
    assert not start(store, "plain", one, T0 + 2)
    assert start(store, "urgent", one, T0 + 2)
    assert not admit_queued(store, "queued", one, T0 + 2)  # full
    assert usage(store, T0 + 2) == [("api", "", 1, 1)]


def test_a_rate_allows_n_admissions_per_sliding_window(store):
    rated = [api(10, rate=(2, 60.0))]
    for run_id in ("a", "b", "c", "d"):
        new_run(store, run_id)
    assert start(store, "a", rated, T0)
    assert start(store, "b", rated, T0 + 1)
    finish(store, "a", T0 + 1.5)  # an ended run's admission still counts in the window
    assert not start(store, "c", rated, T0 + 2)
    assert not start(store, "c", rated, T0 + 59.5)
    assert start(store, "c", rated, T0 + 60)  # a's admission left the window
    assert not start(store, "d", rated, T0 + 60.5)
    assert start(store, "d", rated, T0 + 61)
    assert usage(store, T0 + 61) == [("api", "", 3, 0)]


def test_a_stale_version_is_a_conflict_even_when_the_claims_refuse(store):
    one = [api(1)]
    new_run(store, "a")
    record = new_run(store, "b")
    assert start(store, "a", one, T0)
    stale = dataclasses.replace(tr.start(record, "a", T0), expected_version=record.version + 1)
    with pytest.raises(ConflictError):
        store.admit(stale, one, T0)  # the slot is full, and the version is wrong
    with pytest.raises(ConflictError):
        store.admit(stale, [api(1, "free")], T0)  # the claims would admit it
    missing = dataclasses.replace(stale, run_id="nobody", expected_version=0)
    with pytest.raises(ConflictError):
        store.admit(missing, [api(1, "free")], T0)
    assert store.load_run("b").version == 0
    assert usage(store, T0) == [("api", "", 1, 0)]
    with pytest.raises(ConflictError):
        store.queue(stale, one)
    assert usage(store, T0) == [("api", "", 1, 0)]


def test_limit_usage_lists_each_limit_and_key_held_or_waited_for(store):
    assert store.limit_usage(T0) == []
    for run_id in ("a", "b", "c", "d", "e"):
        new_run(store, run_id)
    assert start(store, "a", [Claim("zeta", "", 2), api(2, "k")], T0)
    assert start(store, "b", [api(2, "k")], T0)
    enqueue(store, "c", [api(2, "k"), Claim("alpha", "x", 1)], T0)
    assert start(store, "d", [Claim("beta", "", 1)], T0)
    finish(store, "d", T0 + 1)  # beta: nobody holds or waits, so it is left out
    enqueue(store, "e", [Claim("alpha", "x", 1)], T0)
    assert store.limit_usage(T0 + 1) == [
        {"limit": "alpha", "key": "x", "running": 0, "queued": 2},
        {"limit": "api", "key": "k", "running": 2, "queued": 1},
        {"limit": "zeta", "key": "", "running": 1, "queued": 0},
    ]


def test_delete_finished_removes_the_claims_of_the_deleted_runs(store):
    for run_id in ("a", "b", "c"):
        new_run(store, run_id)
    assert start(store, "a", [api(5)], T0)
    assert start(store, "b", [api(5)], T0)
    enqueue(store, "c", [api(5)], T0)
    finish(store, "a", T0 + 1)
    assert claim_count(store) == 2  # the commit that ends a run lets go of its claims
    assert store.delete_finished(T0 + 10, [lifecycle.SUCCEEDED]) == 1
    assert claim_count(store) == 2
    assert usage(store, T0 + 2) == [("api", "", 1, 1)]


def claim_count(store: Any) -> int:
    """The claim rows a store keeps (one per run and slot)."""
    kind = type(store).__name__
    if kind == "MemoryStore":
        return sum(len(claims) for claims in store._ledger.claims.values())
    if kind == "SqliteStore":
        with sqlite3.connect(store.path) as db:
            return int(db.execute("SELECT count(*) FROM claims").fetchone()[0])
    import psycopg
    from conftest import PG_DSN
    from psycopg import sql

    with psycopg.connect(PG_DSN) as conn:
        statement = sql.SQL("SELECT count(*) FROM {}.claims").format(sql.Identifier(store.schema))
        row = conn.execute(statement).fetchone()
        assert row is not None
        return int(row[0])


def test_priority_is_stored_and_kept_by_commits(store):
    new_run(store, "p", priority=7)
    assert store.load_run("p").priority == 7
    assert store.get_run("p").priority == 7
    assert start(store, "p", [api(1)], T0)
    assert store.load_run("p").priority == 7  # kept by every commit


# ------------------------------------------------------------------------- races


def race(store: Any, worker: str, attempts: int, go_at: float) -> dict[str, Any]:
    """Admit this worker's runs one after the other against the race limit; each admitted
    run reads the usage while it holds its slot, then ends. The intervals (monotonic
    time) during which each run surely held a slot, the refusals, the most running seen."""
    claims = [Claim("race", "", RACE_LIMIT)]
    intervals, refused, seen = [], 0, 0
    time.sleep(max(0.0, go_at - time.time()))
    for n in range(attempts):
        run_id = f"{worker}-{n}"
        new_run(store, run_id, created_at=time.time())
        if not start(store, run_id, claims, time.time()):
            refused += 1
            continue
        entered = time.monotonic()
        rows = store.limit_usage(time.time())
        seen = max([seen, *(row["running"] for row in rows)])
        time.sleep(0.02)  # held long enough that the other racers find the slots taken
        left = time.monotonic()
        finish(store, run_id, time.time())
        intervals.append((entered, left))
    return {"intervals": intervals, "refused": refused, "seen": seen}


def most_at_once(intervals: Sequence[Sequence[float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    edges = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def check_race(results: Sequence[dict[str, Any]]) -> None:
    intervals = [i for r in results for i in r["intervals"]]
    assert intervals, "no run was admitted"
    assert sum(r["refused"] for r in results) > 0, "the limit never refused a run"
    assert max(r["seen"] for r in results) <= RACE_LIMIT
    assert most_at_once(intervals) <= RACE_LIMIT


def test_threads_never_hold_more_slots_than_the_limit(store):
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    go_at = time.time() + 0.2

    def work(worker: str) -> None:
        try:
            results.append(race(store, worker, 40, go_at))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert errors == []
    assert len(results) == 8
    check_race(results)
    assert usage(store, time.time()) == []


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_processes_never_hold_more_slots_than_the_limit(kind, tmp_path, request):
    if kind == "sqlite":
        target, schema = str(tmp_path / "runs.db"), ""
        open_store(kind, target, schema).close()
    else:
        from conftest import empty_pg_store

        target, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        empty_pg_store(target, schema).close()
    go_at = time.time() + 3.0
    command = [sys.executable, os.path.abspath(__file__), kind, target, schema, str(go_at)]
    workers = [
        subprocess.Popen([*command, f"p{n}", "60"], stdout=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    outputs = [worker.communicate(timeout=100)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, outputs
    check_race([json.loads(output) for output in outputs])
    store = open_store(kind, target, schema)
    try:
        assert usage(store, time.time()) == []
        assert len(store.list_runs(status=lifecycle.SUCCEEDED)) == sum(
            len(json.loads(output)["intervals"]) for output in outputs
        )
    finally:
        store.close()


def open_store(kind: str, target: str, schema: str) -> Any:
    from stageline.stores import PostgresStore, SqliteStore

    if kind == "sqlite":
        return SqliteStore(target)
    return PostgresStore(target, schema=schema, min_size=0, max_size=2)


if __name__ == "__main__":  # a racing process: KIND TARGET SCHEMA GO_AT WORKER ATTEMPTS
    kind, target, schema, go_at, worker, attempts = sys.argv[1:7]
    racing = open_store(kind, target, schema)
    try:
        print(json.dumps(race(racing, worker, int(attempts), float(go_at))))
    finally:
        racing.close()
