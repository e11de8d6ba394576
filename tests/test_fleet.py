"""Fleet reliability in the runtime (SPEC 16): control reaches the owner, crash loops end,
refused commits fail the run, a prepared run is held from the start, nothing lingers.

Two registries on one store stand for two daemons (each with its own ManualClock, so the
lease renewal that carries an abort flag is driven by hand, never by sleeping).
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections import Counter
from typing import Any

import pytest

from stageline import (
    DefinitionError,
    ManualClock,
    Pipeline,
    PipelineFactory,
    Registry,
    RetryPolicy,
    Stage,
    Step,
)
from stageline.core import transitions as tr
from stageline.core.errors import CommitRefused
from stageline.core.store import RunRecord
from stageline.stores import MemoryStore
from stageline.testing import advance, wait_for_stats

pytestmark = pytest.mark.timeout(60)


class Gate:
    """Stage "b" blocks until released; counts how often each step ran."""

    def __init__(self) -> None:
        self.ran: Counter[str] = Counter()
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def step(self, name: str, block: bool = False) -> Any:
        def action(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
            self.ran[name] += 1
            if block:
                self.entered.release()
                if not self.release.is_set():
                    ctx.aborted.wait(30)  # until the run is aborted
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


def test_abort_by_id_reaches_the_daemon_that_owns_the_run(store):
    """Was: `stageline abort` failed ("running but not live in this process") whenever the
    daemon that claimed the request was not the owner. Now the other one sets the store's
    abort flag and the owner aborts the run at its next lease renewal."""
    gate = Gate()
    owner_clock, other_clock = ManualClock(), ManualClock()
    with Registry(clock=owner_clock, lease_ttl=30.0) as owner, Registry(clock=other_clock) as other:
        running = PipelineFactory(gate.pipeline(), store=store, registry=owner).prepare()
        future = running.start()
        assert gate.entered.acquire(timeout=10)
        wait_for_stats(owner, live=1)  # held, its lease renewal armed
        PipelineFactory(gate.pipeline(), store=store, registry=other).abort(running.run_id, "ops")
        assert store.get_run(running.run_id).status == "running"  # the owner decides
        advance(owner_clock, 10.0, owner)  # the lease renewal reads the flag
        result = future.result(10)
    assert result.status == "aborted" and "ops" in str(result.error)
    assert store.get_run(running.run_id).status == "aborted"
    assert store.abort_requests([running.run_id]) == {}  # cleared by the ending commit
    assert gate.ran["c"] == 0


def test_a_recovered_run_with_an_abort_flag_is_aborted_not_resumed(store):
    gate = Gate()
    pipeline = gate.pipeline()
    record = RunRecord("r1", "p", 1, "running", {"a": True}, "b", last_seq=3, stage_runs=1)
    store.create_run(record)  # its process died mid-stage b
    assert store.request_abort("r1", "stuck")
    with Registry(clock=ManualClock()) as registry:
        recovered = registry.recover(PipelineFactory(pipeline, store=store, registry=registry))
    assert recovered == []
    info = store.get_run("r1")
    assert info.status == "aborted" and "stuck" in info.error["message"]
    assert gate.ran["b"] == 0
    assert [e.name for e in store.read_events("r1")][-1] == "pipeline:failure"


def _crashed_run(store: Any, recoveries: int) -> None:
    """A run left "running" at stage b by a process that died, recovered `recoveries`
    times already without committing a stage."""
    record = RunRecord("r1", "p", 1, "running", {"a": True}, "b", last_seq=3, stage_runs=1)
    for _ in range(recoveries):
        record = record.applied(tr.recover(record, 0.0), record.version + 1)
    store.create_run(record)


def test_a_crash_looping_run_is_quarantined_then_released_by_retry(store):
    gate = Gate()
    gate.release.set()
    pipeline = gate.pipeline()
    _crashed_run(store, recoveries=2)
    with Registry(clock=ManualClock(), max_recoveries=2) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        assert registry.recover(factory) == []
        info = store.get_run("r1")
        assert info.status == "quarantined" and "max_recoveries=2" in info.error["message"]
        assert [i.run_id for i in store.list_runs("quarantined")] == ["r1"]
        assert registry.recover(factory) == []  # recovery leaves it alone
        assert registry.stats()["quarantined"] == 1
        assert gate.ran["b"] == 0
        result = registry.retry("r1").wait(10)  # released by hand, with a fresh budget
    assert result.status == "succeeded" and gate.ran == Counter(b=1, c=1)


def test_a_recovery_under_the_limit_continues_and_a_stage_commit_resets_the_count(store):
    gate = Gate()
    gate.release.set()
    _crashed_run(store, recoveries=1)
    with Registry(clock=ManualClock(), max_recoveries=2) as registry:
        factory = PipelineFactory(gate.pipeline(), store=store, registry=registry)
        [context] = registry.recover(factory)
        assert context.wait(10).status == "succeeded"
    assert "__pipeline_data__" not in store.load_run("r1").state  # count cleared by progress


def test_max_recoveries_is_checked():
    with pytest.raises(Exception, match="max_recoveries"):
        Registry(max_recoveries=-1)


class RefusingStore(MemoryStore):
    """A store that refuses for good every commit whose state holds the key "poison"."""

    def commit(self, commit: Any) -> int:
        if "poison" in commit.state:
            raise CommitRefused(f"run {commit.run_id!r}: the store cannot hold this value")
        return super().commit(commit)


def test_a_commit_the_store_always_refuses_fails_the_run_instead_of_looping():
    """Was: a permanently refused commit left the run "running"; it was recovered and its
    side-effecting step ran again every lease period. Now the run fails with the error."""
    store, ran = RefusingStore(), Counter()

    def poisonous(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        ran["side effect"] += 1
        return {"poison": True}

    pipeline = Pipeline("p", [Stage("a", 1, steps=[Step("a", poisonous)])])
    with Registry(clock=ManualClock(), supervision=RetryPolicy(max_restarts=0)) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        result = factory.prepare().run(timeout=10)
        assert result.status == "failed" and "cannot hold this value" in str(result.error)
        assert registry.recover(factory) == []
    assert store.get_run(result.run_id).status == "failed"
    assert ran["side effect"] == 1


def test_a_stage_id_with_nul_is_refused_by_the_definition():
    with pytest.raises(DefinitionError, match="without NUL"):
        Pipeline("p", [Stage("a\x00b", 1, steps=[Step("s", lambda s, c: None)])])


def test_a_prepared_run_is_held_by_the_registry_before_it_runs(store):
    """Was: `factory.abort(ctx.run_id)` right after prepare() raised "pending but not live",
    and a prepared run's lease was renewed by nobody until run(), so another daemon could
    recover it meanwhile."""
    clock = ManualClock()
    pipeline = Pipeline("p", [Stage("a", 1, steps=[Step("a", lambda s, c: {"a": 1})])])
    with Registry(clock=clock, lease_ttl=30.0) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        held = factory.prepare()
        assert held in registry.live_runs()
        advance(clock, 25.0, registry)  # renewed by the registry's timer meanwhile
        lease_until = store.get_run(held.run_id).lease_until.timestamp()
        assert lease_until > clock.wall() + 20.0
        with Registry(clock=ManualClock(wall_start=clock.wall() + 1.0)) as other:
            other_factory = PipelineFactory(pipeline, store=store, registry=other)
            assert other.recover(other_factory) == []  # its lease is alive
        aborted = factory.prepare()
        factory.abort(aborted.run_id, "not wanted")
        assert aborted.wait(10).status == "aborted"
        assert held.run(timeout=10).status == "succeeded"


def test_a_stopped_registry_leaves_no_idle_step_thread_and_pins_nothing():
    """Was: idle step workers kept their last job, pinning a stopped registry and its
    whole MemoryStore, and 12 pool threads stayed after registry.stop()."""
    pipeline = Pipeline(
        "p", [Stage("a", 1, steps=[Step(f"s{i}", lambda s, c: {"x": 1}) for i in range(12)])]
    )
    store = MemoryStore()
    registry = Registry()
    PipelineFactory(pipeline, store=store, registry=registry).prepare().run(timeout=10)
    registry.stop()
    pinned = weakref.ref(store)
    del store, registry
    for _ in range(100):  # retired threads end asynchronously: wait for them, bounded
        steps = [t for t in threading.enumerate() if t.name == "stageline-step"]
        if not steps:
            break
        steps[0].join(0.1)
    assert [t for t in threading.enumerate() if t.name == "stageline-step"] == []
    gc.collect()
    assert pinned() is None


def test_a_logger_with_only_info_and_error_is_adapted():
    """Was: accepted, then the run crashed inside run() and stayed "running"."""
    lines: list[tuple[str, str]] = []

    class Plain:
        def info(self, event: str, **fields: Any) -> None:
            lines.append(("info", event))

        def error(self, event: str, **fields: Any) -> None:
            lines.append(("error", event))

    def boom(state: dict[str, Any], ctx: Any) -> None:
        ctx.log.warning("about to fail")
        raise ValueError("no")

    pipeline = Pipeline("p", [Stage("a", 1, steps=[Step("a", boom, retries=1)])])
    result = PipelineFactory(pipeline, logger=Plain()).prepare().run(timeout=10)
    assert result.status == "failed"
    assert ("error", "about to fail") in lines  # warning -> the next level it has
    assert ("error", "step:retry") in lines and ("error", "pipeline:failure") in lines
    assert ("info", "pipeline:start") in lines


def test_a_logger_without_any_level_is_refused_at_construction():
    pipeline = Pipeline("p", [Stage("a", 1, steps=[Step("a", lambda s, c: None)])])
    with pytest.raises(Exception, match="none of the methods debug, info, warning, error"):
        PipelineFactory(pipeline, logger=object())


def test_registry_stats_count_quarantined(store):
    with Registry() as registry:
        wait_for_stats(registry, quarantined=0)


def test_one_damaged_run_row_does_not_stop_recovery_of_its_neighbours(sql_store):
    """Was: a garbage `state` column on one orphaned running run made `registry.recover`
    raise in list_runs, and its healthy neighbours stayed "running" forever."""
    from test_store_fleet import GARBAGE  # tests/ is on sys.path

    store, raw = sql_store
    gate = Gate()
    gate.release.set()
    for run_id in ("r1", "r2", "r3"):
        store.create_run(
            RunRecord(run_id, "p", 1, "running", {"a": True}, "b", last_seq=3, stage_runs=1)
        )
    raw.execute("UPDATE {t}runs SET state = ? WHERE run_id = ?", (GARBAGE["not cbor"], "r2"))
    with Registry(clock=ManualClock()) as registry:
        recovered = registry.recover(
            PipelineFactory(gate.pipeline(), store=store, registry=registry)
        )
        assert sorted(c.run_id for c in recovered) == ["r1", "r3"]
        assert all(c.wait(10).status == "succeeded" for c in recovered)
    statuses = {info.run_id: info.status for info in store.list_runs()}
    assert statuses == {"r1": "succeeded", "r2": "corrupt", "r3": "succeeded"}


def test_retry_with_a_patch_fixes_what_made_the_run_fail(store):
    """A run that failed for missing data is retried with the data, in the retry's
    compare-and-set; the failed attempt is kept."""

    def ship(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if not state.get("address"):
            raise ValueError("no address")
        return {"shipped": state["address"]}

    pipeline = Pipeline("p", [Stage("ship", 1, steps=[Step("ship", ship)])])
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        failed = factory.prepare().run(timeout=10)
        assert failed.status == "failed"
        with pytest.raises(Exception, match="retry patch"):
            registry.retry(failed.run_id, patch={"bad": object()})
        result = registry.retry(failed.run_id, patch={"address": "Main St 1"}).wait(10)
    assert result.status == "succeeded" and result.state["shipped"] == "Main St 1"
    assert len(store.load_run(failed.run_id).state["__pipeline_data__"]["failures"]) == 1


def test_retry_with_a_patch_of_a_run_waiting_for_its_restart(store):
    calls = Counter()

    def ship(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls["ship"] += 1
        if not state.get("address"):
            raise ValueError("no address")
        return {"shipped": True}

    pipeline = Pipeline("p", [Stage("ship", 1, steps=[Step("ship", ship)])])
    policy = RetryPolicy(max_restarts=3, backoff=60.0)
    with Registry(clock=ManualClock(), supervision=policy) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        run = factory.prepare()
        future = run.start()
        wait_for_stats(registry, retrying=1)
        assert registry.retry(run.run_id, patch={"address": "x"}) is run  # same context
        assert future.result(10).status == "succeeded"
    assert calls["ship"] == 2


def test_a_child_stage_commit_the_store_always_refuses_fails_the_run():
    """Review: the commit of a child's stage was not guarded like a closing commit, so a
    refusal for good crashed the run and it was recovered (and its step re-run) until
    quarantined."""
    store, ran = RefusingStore(), Counter()

    def poisonous(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        ran["side effect"] += 1
        return {"poison": True}

    child = Pipeline("kid", [Stage("k", 1, steps=[Step("k", poisonous)])])
    parent = Pipeline("p", [Stage("fanout", 1, pipelines=[child])])
    with Registry(clock=ManualClock(), supervision=RetryPolicy(max_restarts=0)) as registry:
        factory = PipelineFactory(parent, store=store, registry=registry)
        result = factory.prepare().run(timeout=10)
        assert result.status == "failed" and "cannot hold this value" in str(result.error)
        assert registry.recover(factory) == []
    assert store.get_run(result.run_id).status == "failed"
    assert ran["side effect"] == 1


def test_an_abort_flag_on_a_run_prepared_elsewhere_and_never_started_aborts_it(store):
    """Review: a run prepared (held) by one registry but not started ignored the flag."""
    pipeline = Pipeline("p", [Stage("a", 1, steps=[Step("a", lambda s, c: {"a": 1})])])
    owner_clock = ManualClock()
    with Registry(clock=owner_clock, lease_ttl=30.0) as owner, Registry() as other:
        prepared = PipelineFactory(pipeline, store=store, registry=owner).prepare()
        wait_for_stats(owner, live=1)  # held, its lease renewal armed
        PipelineFactory(pipeline, store=store, registry=other).abort(prepared.run_id, "no")
        advance(owner_clock, 10.0, owner)  # the renewal reads the flag
        assert prepared.wait(10).status == "aborted"
    assert store.get_run(prepared.run_id).status == "aborted"


def test_a_batch_of_only_unreadable_requests_does_not_hide_the_next_good_one(sql_store):
    """Review: a claim whose batch held only unreadable requests returned nothing, and a
    PostgreSQL daemon then waited a whole idle period per poison request."""
    import time

    from stageline.core.mailbox import Request

    store, raw = sql_store
    for n in range(3):
        store.post_request(Request(f"bad{n}", "start", f"r{n}", time.time(), pipeline_id="p"))
        raw.execute("UPDATE {t}requests SET args = ? WHERE request_id = ?", (b"\xff", f"bad{n}"))
    store.post_request(Request("good", "start", "r9", time.time(), pipeline_id="p"))
    assert [r.request_id for r in store.claim_requests("me", 1)] == ["good"]
    for n in range(3):  # answered failed (it cannot be read back as a Request)
        row = raw.execute("SELECT status FROM {t}requests WHERE request_id = ?", (f"bad{n}",))
        assert row.fetchone()[0] == "failed"
