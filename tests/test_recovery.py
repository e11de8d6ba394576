"""Leases and crash recovery (SPEC 10, 12): who drives a running run, and taking over.

A process that stalls or dies stops renewing its runs' leases; `registry.recover` in
another process takes each such run over with one compare-and-set and continues it from
its last commit. Two clocks stand for two machines: a registry whose ManualClock is ahead
sees the other's leases as run out.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter

import pytest

from stageline import ManualClock, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.core.codec import encode
from stageline.core.errors import ConflictError
from stageline.core.store import Commit, RunRecord
from stageline.stores import MemoryStore, SqliteStore
from stageline.stores.sqlite import SCHEMA_VERSION
from stageline.testing import EventRecorder, advance

pytestmark = pytest.mark.timeout(60)

WALL = 1_767_225_600.0  # ManualClock's default wall-clock start


class Blocking:
    """A three-stage pipeline whose stage "b" blocks the first time it runs for a run."""

    def __init__(self) -> None:
        self.runs: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.blocked = threading.Semaphore(0)

    def step(self, name, block=False):
        def action(state, ctx):
            with self.lock:
                self.runs[(ctx.run_id, name)] += 1
                first = self.runs[(ctx.run_id, name)] == 1
            if block and first:
                self.blocked.release()
                self.release.wait(30)
            return {name: True}

        return action

    def pipeline(self) -> Pipeline:
        return Pipeline(
            "p",
            [
                Stage("a", 1, steps=[Step("a", self.step("a"))]),
                Stage("b", 2, steps=[Step("b", self.step("b", block=True))]),
                Stage("c", 3, steps=[Step("c", self.step("c"))]),
            ],
        )

    def wait_blocked(self, n: int = 1) -> None:
        for _ in range(n):
            assert self.blocked.acquire(timeout=10), "stage b never started"

    def count(self, run_id: str) -> dict[str, int]:
        with self.lock:
            return {name: self.runs[(run_id, name)] for name in "abc"}


def record(run_id="r1", status="running", stage="b", **fields) -> RunRecord:
    return RunRecord(run_id, "p", 1, status, {}, stage, **fields)


# --- the store's lease operations ---------------------------------------------------------


def test_claim_run_is_a_compare_and_set_on_the_lease(store):
    store.create_run(record(owner="dead", lease_until=100.0))
    assert not store.claim_run("r1", "me", 200.0, now=99.0)  # dead's lease still runs
    assert store.claim_run("r1", "me", 200.0, now=100.0)  # ran out: taken
    assert not store.claim_run("r1", "other", 300.0, now=150.0)  # mine now
    assert store.claim_run("r1", "me", 250.0, now=150.0)  # the owner may claim again
    loaded = store.load_run("r1")
    assert (loaded.owner, loaded.lease_until, loaded.version) == ("me", 250.0, 0)
    info = store.get_run("r1")
    assert info.owner == "me" and info.lease_until.timestamp() == 250.0

    store.create_run(record("r2", owner=None))
    assert store.claim_run("r2", "me", 10.0, now=0.0)  # no owner: anyone may take it
    store.create_run(record("r3", status="failed"))
    assert not store.claim_run("r3", "me", 10.0, now=0.0)  # only running runs
    with pytest.raises(Exception, match="not in this store"):
        store.claim_run("nope", "me", 10.0, now=0.0)


def test_racing_claims_exactly_one_wins(store):
    for i in range(20):
        store.create_run(record(f"r{i}", owner="dead", lease_until=1.0))
    barrier = threading.Barrier(4)
    won: list[tuple[str, str]] = []

    def claim(owner):
        barrier.wait(10)
        for i in range(20):
            if store.claim_run(f"r{i}", owner, 100.0, now=50.0):
                won.append((f"r{i}", owner))

    threads = [threading.Thread(target=claim, args=(f"o{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(r for r, _ in won) == sorted(f"r{i}" for i in range(20))
    assert all(store.load_run(r).owner == owner for r, owner in won)


def test_renew_leases_only_renews_what_the_owner_still_holds(store):
    store.create_run(record("r1", owner="me", lease_until=10.0))
    store.create_run(record("r2", owner="other", lease_until=10.0))
    assert store.renew_leases("me", ["r1", "r2", "gone"], 40.0) == ["r1"]
    assert store.load_run("r1").lease_until == 40.0
    assert store.load_run("r2").lease_until == 10.0
    assert store.load_run("r1").version == 0  # a lease write is not a commit


def test_commits_keep_the_lease_unless_they_take_it(store):
    store.create_run(record("r1", owner="me", lease_until=10.0))
    base = {"expected_version": 0, "status": "running", "stage": "c", "state": {"x": 1},
            "last_seq": 1, "stage_runs": 1, "updated_at": 5.0}  # fmt: skip
    store.commit(Commit("r1", **base))
    assert (store.load_run("r1").owner, store.load_run("r1").lease_until) == ("me", 10.0)
    store.commit(Commit("r1", **{**base, "expected_version": 1}, owner="you", lease_until=99.0))
    loaded = store.load_run("r1")
    assert (loaded.owner, loaded.lease_until, loaded.version) == ("you", 99.0, 2)


# --- the registry's leases ----------------------------------------------------------------


def test_a_registry_owns_its_running_runs_and_renews_their_leases(store):
    blocking = Blocking()
    clock = ManualClock()
    with Registry(clock=clock, lease_ttl=30.0, owner="host-a") as registry:
        factory = PipelineFactory(blocking.pipeline(), store=store, registry=registry)
        run = factory.prepare()
        future = run.start()
        blocking.wait_blocked()
        loaded = store.load_run(run.run_id)
        assert loaded.owner == "host-a" and loaded.lease_until == pytest.approx(WALL + 30.0)
        advance(clock, 10.0, registry)  # a third of the lease: renewed
        assert store.load_run(run.run_id).lease_until == pytest.approx(WALL + 40.0)
        advance(clock, 10.0, registry)
        assert store.load_run(run.run_id).lease_until == pytest.approx(WALL + 50.0)
        blocking.release.set()
        assert future.result(10).status == "succeeded"


def test_a_run_prepared_long_ago_renews_its_lease_before_it_starts(store):
    blocking = Blocking()
    blocking.release.set()
    clock = ManualClock()
    with Registry(clock=clock, lease_ttl=30.0, owner="host-a") as registry:
        run = PipelineFactory(blocking.pipeline(), store=store, registry=registry).prepare()
        assert store.load_run(run.run_id).lease_until == pytest.approx(WALL + 30.0)
        clock.advance(100.0)  # no timer is armed yet: nothing else moves
        future = run.start()
        assert store.load_run(run.run_id).lease_until == pytest.approx(WALL + 130.0)
        assert future.result(10).status == "succeeded"


def test_stop_releases_the_leases_of_runs_it_leaves_running(store):
    blocking = Blocking()
    registry = Registry(clock=ManualClock(), owner="host-a")
    factory = PipelineFactory(blocking.pipeline(), store=store, registry=registry)
    run = factory.prepare()
    future = run.start()
    blocking.wait_blocked()
    drained = threading.Event()
    drain = run._run.drain  # private: the run's handle

    def drain_then_signal():
        answer = drain()
        drained.set()
        return answer

    run._run.drain = drain_then_signal
    stopper = threading.Thread(target=registry.stop, kwargs={"timeout": 10})
    stopper.start()
    assert drained.wait(10)
    blocking.release.set()
    stopper.join(20)
    assert future.result(10).status == "running"
    loaded = store.load_run(run.run_id)
    assert loaded.status == "running" and loaded.stage == "c" and loaded.lease_until == 0.0

    with Registry(clock=ManualClock(), owner="host-b") as other:  # same time: no waiting
        (recovered,) = other.recover(PipelineFactory(blocking.pipeline(), store=store))
        assert recovered.wait(10).status == "succeeded"
    assert blocking.count(run.run_id) == {"a": 1, "b": 1, "c": 1}


# --- recover ------------------------------------------------------------------------------


def test_recover_takes_over_a_run_whose_owner_stopped_renewing(store):
    """Host A stalls mid-stage (its clock, hence its renewals, stand still). Host B, whose
    clock is past A's lease, recovers the run; A's late commit is refused."""
    blocking = Blocking()
    registry_a = Registry(clock=ManualClock(), lease_ttl=30.0, owner="host-a")
    factory_a = PipelineFactory(blocking.pipeline(), store=store, registry=registry_a)
    run_a = factory_a.prepare()
    future_a = run_a.start()
    blocking.wait_blocked()

    early = Registry(clock=ManualClock(wall_start=WALL + 29.0), owner="host-b")
    assert early.recover(PipelineFactory(blocking.pipeline(), store=store)) == []  # still A's
    early.stop()

    with Registry(clock=ManualClock(wall_start=WALL + 31.0), owner="host-b") as registry_b:
        factory_b = PipelineFactory(blocking.pipeline(), store=store, registry=registry_b)
        (run_b,) = registry_b.recover(factory_b)
        events = EventRecorder(run_b)
        result = run_b.wait(10)
        assert registry_b.stats()["recovered"] == 1
    assert result.status == "succeeded" and result.state == {"a": True, "b": True, "c": True}
    assert events.names()[-1] == "pipeline:success"

    blocking.release.set()  # A wakes up: its stage commit conflicts, it stops driving the run
    with pytest.raises(ConflictError):
        future_a.result(10)
    registry_a.stop()
    assert blocking.count(run_a.run_id) == {"a": 1, "b": 2, "c": 1}  # a committed once
    journal = store.read_events(run_a.run_id)
    starts = [(e.resumed, e.entry) for e in journal if e.name == "pipeline:start"]
    assert starts == [(False, "a"), (True, "b")]
    assert [e.stage_id for e in journal if e.name == "stage:success"] == ["a", "b", "c"]
    seqs = [e.seq for e in journal]
    assert seqs == sorted(set(seqs))


def test_recover_takes_runs_with_no_owner_and_skips_other_pipelines(store):
    blocking = Blocking()
    unowned = PipelineFactory(blocking.pipeline(), store=store)  # no registry, no lease
    run = unowned.prepare()
    future = run.start()
    blocking.wait_blocked()
    other = Pipeline("other", [Stage("x", 1, steps=[Step("x", lambda s, c: None)])])
    with Registry(clock=ManualClock()) as registry:
        assert registry.recover(PipelineFactory(other, store=store)) == []
        (recovered,) = registry.recover(PipelineFactory(blocking.pipeline(), store=store))
        assert registry.recover(PipelineFactory(blocking.pipeline(), store=store)) == []  # live
        assert recovered.wait(10).status == "succeeded"
    blocking.release.set()
    with pytest.raises(ConflictError):
        future.result(10)


def test_recover_starts_a_pending_run_whose_registry_is_gone(store):
    blocking = Blocking()
    blocking.release.set()
    registry_a = Registry(clock=ManualClock(), owner="host-a")
    prepared = PipelineFactory(blocking.pipeline(), store=store, registry=registry_a).prepare()
    unowned = PipelineFactory(blocking.pipeline(), store=store).prepare()  # no registry
    registry_a.stop()  # as if host A died before starting its run
    with Registry(clock=ManualClock(wall_start=WALL + 31.0), owner="host-b") as registry_b:
        (run,) = registry_b.recover(PipelineFactory(blocking.pipeline(), store=store))
        assert run.run_id == prepared.run_id
        assert run.wait(10).status == "succeeded"
    assert store.get_run(unowned.run_id).status == "pending"  # its preparer may still start it
    journal = store.read_events(prepared.run_id)
    assert [(e.resumed, e.entry) for e in journal if e.name == "pipeline:start"] == [(False, "a")]


def test_recover_goes_on_past_a_run_it_cannot_continue(store):
    blocking = Blocking()
    blocking.release.set()
    store.create_run(record("gone", stage="nowhere"))  # a stage this version does not have
    store.create_run(record("fine", stage="c"))
    with Registry(clock=ManualClock()) as registry:
        (run,) = registry.recover(PipelineFactory(blocking.pipeline(), store=store))
        assert run.run_id == "fine" and run.wait(10).status == "succeeded"
    assert store.get_run("gone").status == "running"


def test_two_registries_racing_recover_on_one_sqlite_file_resume_each_run_once(tmp_path):
    db = tmp_path / "runs.db"
    blocking = Blocking()
    runs = 8
    origin = SqliteStore(db)
    stalled = [PipelineFactory(blocking.pipeline(), store=origin).prepare() for _ in range(runs)]
    futures = [run.start() for run in stalled]
    blocking.wait_blocked(runs)

    barrier = threading.Barrier(2)
    recovered: dict[str, list] = {}
    stores = {name: SqliteStore(db) for name in ("b", "c")}  # a connection each, as processes
    registries = {name: Registry(clock=ManualClock(), owner=name) for name in stores}

    def recover(name):
        factory = PipelineFactory(blocking.pipeline(), store=stores[name])
        barrier.wait(10)
        recovered[name] = registries[name].recover(factory)

    threads = [threading.Thread(target=recover, args=(name,)) for name in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = [context.run_id for contexts in recovered.values() for context in contexts]
    assert sorted(ids) == sorted(run.run_id for run in stalled)  # each exactly once
    for contexts in recovered.values():
        for context in contexts:
            assert context.wait(20).status == "succeeded"
    for registry in registries.values():
        registry.stop()
    blocking.release.set()
    for future in futures:
        with pytest.raises(ConflictError):
            future.result(10)
    for run in stalled:
        assert blocking.count(run.run_id) == {"a": 1, "b": 2, "c": 1}
        journal = origin.read_events(run.run_id)
        assert [e.name for e in journal].count("pipeline:start") == 2
        assert [e.stage_id for e in journal if e.name == "stage:success"] == ["a", "b", "c"]
    for s in (origin, *stores.values()):
        s.close()


# --- SQLite files made by the previous schema ---------------------------------------------

V1_SCHEMA = """
CREATE TABLE stageline_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, pipeline_id TEXT NOT NULL, pipeline_version INTEGER NOT NULL,
    status TEXT NOT NULL, stage TEXT, state BLOB NOT NULL, checkpoint BLOB, error BLOB,
    version INTEGER NOT NULL, last_seq INTEGER NOT NULL, stage_runs INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX runs_status ON runs (status, pipeline_id);
CREATE TABLE events (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
INSERT INTO stageline_meta VALUES ('schema_version', '1');
"""


def test_a_version_1_sqlite_file_is_migrated_and_its_runs_recovered(tmp_path):
    db = tmp_path / "old.db"
    raw = sqlite3.connect(db)
    raw.executescript(V1_SCHEMA)
    raw.execute(
        "INSERT INTO runs VALUES ('old', 'p', 1, 'running', 'c', ?, NULL, NULL, 3, 4, 2, 1.0, 2.0)",
        (encode({"a": True, "b": True}),),
    )
    raw.commit()
    raw.close()

    store = SqliteStore(db)
    loaded = store.load_run("old")
    assert (loaded.status, loaded.stage, loaded.owner, loaded.lease_until) == (
        "running", "c", None, None,
    )  # fmt: skip
    blocking = Blocking()
    with Registry(clock=ManualClock()) as registry:
        (run,) = registry.recover(PipelineFactory(blocking.pipeline(), store=store))
        result = run.wait(10)
    assert result.status == "succeeded" and result.state == {"a": True, "b": True, "c": True}
    assert blocking.count("old") == {"a": 0, "b": 0, "c": 1}
    store.close()
    raw = sqlite3.connect(db)
    meta = raw.execute("SELECT value FROM stageline_meta WHERE key='schema_version'").fetchall()
    raw.close()
    assert meta == [(str(SCHEMA_VERSION),)]  # 3 since the mailbox (schema v3)
    SqliteStore(db).close()  # opening a migrated file again changes nothing


def test_memory_store_is_a_store_with_leases():
    from stageline import Store

    assert isinstance(MemoryStore(), Store)
