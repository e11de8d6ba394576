"""Supervision of failed runs (SPEC 10): restarts by policy, manual retry, runtime bugs.

Every test runs on every store and drives time with a ManualClock: a restart's backoff
fires only when the test advances the clock past it.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stageline import (
    ManualClock,
    Pipeline,
    PipelineFactory,
    Registry,
    RetryPolicy,
    RunNotFound,
    RunStateError,
    Stage,
    StagelineError,
    Step,
)
from stageline.actors.run import RunActor
from stageline.core.errors import InternalError
from stageline.testing import EventRecorder, advance, wait_for_stats

pytestmark = pytest.mark.timeout(60)


class Flaky:
    """Step actions that fail until told otherwise; counts every execution per step."""

    def __init__(self, failures: int = 0, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.runs: Counter[str] = Counter()
        self.lock = threading.Lock()

    def ok(self, name):
        def action(state, ctx):
            with self.lock:
                self.runs[name] += 1
            return {name: True}

        return action

    def flaky(self, name):
        def action(state, ctx):
            with self.lock:
                self.runs[name] += 1
                fail = self.failures > 0
                self.failures -= 1
            if fail:
                raise self.error(f"{name} is down")
            return {name: True}

        return action


def three_stages(flaky: Flaky) -> Pipeline:
    return Pipeline(
        "p",
        [
            Stage("a", 1, steps=[Step("a", flaky.ok("a"))]),
            Stage("b", 2, label="Bee", steps=[Step("b", flaky.flaky("b"))]),
            Stage("c", 3, steps=[Step("c", flaky.ok("c"))]),
        ],
    )


def assert_seqs_increase(events):
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


def test_a_failed_run_restarts_after_backoff_from_its_failed_stage(store):
    flaky = Flaky(failures=2)
    clock = ManualClock()
    policy = RetryPolicy(max_restarts=3, backoff=1.0, max_backoff=60.0)
    with Registry(clock=clock, supervision=policy) as registry:
        factory = PipelineFactory(three_stages(flaky), store=store, registry=registry)
        run = factory.prepare()
        events = EventRecorder(run)
        future = run.start()

        events.wait_for("pipeline:failure", 1)
        wait_for_stats(registry, retrying=1)
        assert not future.done()  # the registry holds the result: it will restart the run
        assert store.get_run(run.run_id).status == "failed"
        advance(clock, 0.99, registry)
        assert flaky.runs["b"] == 1  # 1.0 * 2**0 has not passed yet
        advance(clock, 0.01, registry)

        events.wait_for("pipeline:failure", 2)
        wait_for_stats(registry, retrying=1)
        advance(clock, 1.99, registry)
        assert flaky.runs["b"] == 2  # the second restart waits 1.0 * 2**1
        advance(clock, 0.01, registry)
        result = future.result(10)
        stats = wait_for_stats(registry, retrying=0, restarts=2)

    assert result.status == "succeeded", result.error
    assert result.state == {"a": True, "b": True, "c": True}
    assert flaky.runs == {"a": 1, "b": 3, "c": 1}  # the committed stage never ran again
    assert stats["failed"] == 0 and stats["crashed"] == 0
    names = events.names()
    assert names.count("pipeline:start") == 3
    starts = events.of("pipeline:start")
    assert [e.resumed for e in starts] == [False, True, True]
    assert [e.entry for e in starts] == ["a", "b", "b"]
    assert names[-1] == "pipeline:success"
    assert_seqs_increase(events.events)
    journal = store.read_events(run.run_id)
    assert_seqs_increase(journal)
    assert [e.name for e in journal if e.name.startswith("pipeline:")] == [
        "pipeline:start", "pipeline:failure", "pipeline:start",
        "pipeline:failure", "pipeline:start", "pipeline:success",
    ]  # fmt: skip
    info = store.get_run(run.run_id)
    assert info.status == "succeeded" and info.state == result.state  # no reserved key shown


def test_exhausted_restarts_keep_every_attempts_error(store):
    flaky = Flaky(failures=99)
    clock = ManualClock()
    policy = RetryPolicy(max_restarts=2, backoff=5.0, max_backoff=6.0)
    with Registry(clock=clock, supervision=policy) as registry:
        factory = PipelineFactory(three_stages(flaky), store=store, registry=registry)
        run = factory.prepare()
        events = EventRecorder(run)
        future = run.start()
        for n, delay in ((1, 5.0), (2, 6.0)):  # 5 * 2**1 = 10 is capped at 6
            events.wait_for("pipeline:failure", n)
            wait_for_stats(registry, retrying=1)
            advance(clock, delay - 0.01, registry)
            assert flaky.runs["b"] == n
            advance(clock, 0.01, registry)
        result = future.result(10)
        stats = wait_for_stats(registry, retrying=0, failed=1)

    assert result.status == "failed"
    assert flaky.runs == {"a": 1, "b": 3}
    assert stats["restarts"] == 2
    assert len(result.attempts) == 3 and result.attempts[-1] is result.error
    assert [str(e) for e in result.attempts] == ["1 step(s) failed in Bee:b: b: ConnectionError('b is down')"] * 3
    assert all(e.steps[0].type == "ConnectionError" for e in result.attempts)
    info = store.get_run(run.run_id)
    assert info.status == "failed" and info.stage == "b"
    assert len(info.error["attempts"]) == 3
    assert info.error["attempts"][-1] == {k: v for k, v in info.error.items() if k != "attempts"}
    assert all("ConnectionError" in a["message"] for a in info.error["attempts"])
    assert info.state == {"a": True}
    assert [i.run_id for i in registry.failed_runs()] == [run.run_id]  # read from the store


def test_retry_on_is_matched_against_the_failed_steps_exception_classes(store):
    class Transient(ConnectionError):
        pass

    clock = ManualClock()
    policy = RetryPolicy(retry_on=(OSError,))  # ConnectionError and its subclasses are OSErrors
    with Registry(clock=clock, supervision=policy) as registry:
        flaky = Flaky(failures=1, error=Transient)
        factory = PipelineFactory(three_stages(flaky), store=store, registry=registry)
        future = factory.prepare().start()
        wait_for_stats(registry, retrying=1)
        advance(clock, 1.0, registry)
        assert future.result(10).status == "succeeded"

        other = Flaky(failures=1, error=ValueError)
        factory = PipelineFactory(three_stages(other), store=store, registry=registry)
        result = factory.prepare().run(10)  # not an OSError: no restart, run() returns at once
        assert result.status == "failed" and result.attempts == (result.error,)
        assert wait_for_stats(registry, retrying=0)["failed"] == 1
        assert other.runs["b"] == 1
        assert [info.run_id for info in registry.failed_runs()] == [result.run_id]


def test_without_a_policy_failed_runs_stay_failed(store):
    flaky = Flaky(failures=1)
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(three_stages(flaky), store=store, registry=registry)
        result = factory.prepare().run(10)
        assert result.status == "failed"
        assert wait_for_stats(registry, failed=1)["retrying"] == 0
        assert registry.live_runs() == []
        assert "attempts" not in store.get_run(result.run_id).error  # never restarted


def test_a_router_failure_is_matched_by_the_routers_exception():
    calls = Counter()

    def route(state, results):
        calls["route"] += 1
        if calls["route"] == 1:
            raise TimeoutError("the approvals service timed out")
        return None

    pipeline = Pipeline("r", [Stage("a", 1, steps=[Step("a", lambda s, c: {"a": 1})], router=route)])
    clock = ManualClock()
    with Registry(clock=clock, supervision=RetryPolicy(retry_on=(TimeoutError,))) as registry:
        future = PipelineFactory(pipeline, registry=registry).prepare().start()
        wait_for_stats(registry, retrying=1)
        advance(clock, 1.0, registry)
        assert future.result(10).status == "succeeded"


def test_manual_retry_from_the_store_and_failed_runs(store):
    flaky = Flaky(failures=1)
    pipeline = three_stages(flaky)
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        failed = factory.prepare().run(10)
        assert failed.status == "failed"
        assert [i.run_id for i in registry.failed_runs()] == [failed.run_id]
        context = registry.retry(failed.run_id)
        result = context.wait(10)
        assert result.status == "succeeded" and result.state == {"a": True, "b": True, "c": True}
        assert flaky.runs == {"a": 1, "b": 2, "c": 1}
        assert registry.failed_runs() == []
        assert wait_for_stats(registry, restarts=1)["failed"] == 1
        with pytest.raises(RunStateError, match="not failed"):
            registry.retry(failed.run_id)
        with pytest.raises(RunNotFound, match="pass factory="):
            registry.retry("no-such-run")


def test_retry_by_another_registry_that_only_knows_the_store(store):
    flaky = Flaky(failures=1)
    failed = PipelineFactory(three_stages(flaky), store=store).prepare().run(10)
    assert failed.status == "failed"
    with Registry(clock=ManualClock()) as registry:
        with pytest.raises(RunNotFound):
            registry.retry(failed.run_id)  # no factory known yet
        factory = PipelineFactory(three_stages(flaky), store=store)
        context = registry.retry(failed.run_id, factory=factory)
        result = context.wait(10)
        events = store.read_events(failed.run_id)
    assert result.status == "succeeded"
    starts = [e for e in events if e.name == "pipeline:start"]
    assert [(e.resumed, e.entry) for e in starts] == [(False, "a"), (True, "b")]
    assert_seqs_increase(events)


def test_racing_retries_exactly_one_wins(store):
    flaky = Flaky(failures=1)
    failed = PipelineFactory(three_stages(flaky), store=store).prepare().run(10)
    barrier = threading.Barrier(2)
    outcomes = []

    def retry(registry):
        factory = PipelineFactory(three_stages(flaky), store=store)
        barrier.wait(10)
        try:
            outcomes.append(registry.retry(failed.run_id, factory=factory).wait(10).status)
        except RunStateError:
            outcomes.append("lost")

    with Registry(clock=ManualClock()) as one, Registry(clock=ManualClock()) as two:
        threads = [threading.Thread(target=retry, args=(r,)) for r in (one, two)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert sorted(outcomes) == ["lost", "succeeded"]
    assert flaky.runs["b"] == 2 and flaky.runs["c"] == 1


def test_manual_retry_of_a_run_waiting_for_its_restart_restarts_it_now(store):
    flaky = Flaky(failures=1)
    with Registry(clock=ManualClock(), supervision=RetryPolicy(backoff=60.0)) as registry:
        factory = PipelineFactory(three_stages(flaky), store=store, registry=registry)
        run = factory.prepare()
        future = run.start()
        wait_for_stats(registry, retrying=1)
        assert registry.retry(run.run_id) is run  # the same context, its future continues
        assert future.result(10).status == "succeeded"
        assert wait_for_stats(registry, retrying=0)["restarts"] == 1


def test_stop_during_a_backoff_leaves_the_run_failed_and_ends_its_future(store):
    flaky = Flaky(failures=1)
    registry = Registry(clock=ManualClock(), supervision=RetryPolicy(backoff=60.0))
    factory = PipelineFactory(three_stages(flaky), store=store, registry=registry)
    future = factory.prepare().start()
    wait_for_stats(registry, retrying=1)
    registry.stop()
    result = future.result(10)
    assert result.status == "failed"
    assert store.get_run(result.run_id).status == "failed"
    assert flaky.runs["b"] == 1
    with pytest.raises(RunStateError, match="stopped"):
        registry.retry(result.run_id)


def test_a_runtime_bug_is_recorded_and_the_run_recovered(store, monkeypatch):
    """A RunActor method that raises (not a step): the registry records the failure and
    restarts the run from its last commit. Without recovery run() would raise."""
    flaky = Flaky()
    original = RunActor.steps_done
    bugs = Counter()

    def buggy(self, run):
        if run.stage.id == "b" and bugs["raised"] == 0:
            bugs["raised"] += 1
            raise KeyError("a bug in the runtime")
        return original(self, run)

    monkeypatch.setattr(RunActor, "steps_done", buggy)
    clock = ManualClock()
    with Registry(clock=clock) as registry:  # no policy: a runtime bug is recovered anyway
        factory = PipelineFactory(three_stages(flaky), store=store, registry=registry)
        run = factory.prepare()
        events = EventRecorder(run)
        future = run.start()
        wait_for_stats(registry, retrying=1, crashed=1)
        info = store.get_run(run.run_id)
        assert info.status == "failed" and info.error["kind"] == "internal"
        assert "KeyError" in info.error["message"]
        advance(clock, 1.0, registry)
        result = future.result(10)
    assert bugs["raised"] == 1
    assert result.status == "succeeded", result.error
    assert flaky.runs == {"a": 1, "b": 2, "c": 1}
    failure = events.of("pipeline:failure")
    assert len(failure) == 1 and isinstance(failure[0].error, InternalError)
    journal = store.read_events(run.run_id)
    assert_seqs_increase(journal)
    journaled = [e for e in journal if e.name == "pipeline:failure"]
    assert [e.seq for e in journaled] == [failure[0].seq]  # the event subscribers saw
    assert events.of("pipeline:start")[-1].resumed is True


def test_a_runtime_bug_that_keeps_happening_stays_failed(store, monkeypatch):
    def always(self, run):
        raise KeyError("a bug in the runtime")

    monkeypatch.setattr(RunActor, "steps_done", always)
    clock = ManualClock()
    policy = RetryPolicy(max_restarts=1, backoff=1.0, retry_on=(ValueError,))
    with Registry(clock=clock, supervision=policy) as registry:
        factory = PipelineFactory(three_stages(Flaky()), store=store, registry=registry)
        future = factory.prepare().start()
        wait_for_stats(registry, retrying=1, crashed=1)  # retry_on does not apply to bugs
        advance(clock, 1.0, registry)
        with pytest.raises(InternalError, match="KeyError"):
            future.result(10)
        wait_for_stats(registry, crashed=2, failed=1, retrying=0)
    info = store.get_run(future_run_id(store))
    assert info.status == "failed" and len(info.error["attempts"]) == 2


def future_run_id(store):
    (info,) = store.list_runs()
    return info.run_id


def test_retry_policy_validation_and_delays():
    policy = RetryPolicy(max_restarts=5, backoff=0.5, max_backoff=3.0, retry_on=ValueError)
    assert policy.retry_on == (ValueError,)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(StagelineError) as info:
        RetryPolicy(max_restarts=-1, backoff=-1, max_backoff=-2, retry_on=("nope",))
    for word in ("max_restarts", "backoff", "max_backoff", "retry_on"):
        assert word in str(info.value)
    with pytest.raises(StagelineError, match="RetryPolicy"):
        Registry(supervision={"max_restarts": 3})
    with pytest.raises(AttributeError):
        policy.backoff = 2.0  # frozen


def test_retry_policy_matches_recorded_exception_classes():
    policy = RetryPolicy(retry_on=(OSError,))
    steps = [{"types": ["builtins.ValueError", "builtins.Exception"]},
             {"types": ["builtins.ConnectionError", "builtins.OSError", "builtins.Exception"]}]  # fmt: skip
    assert policy.matches({"steps": steps, "types": ["stageline.core.errors.StageError"]})
    assert not policy.matches({"steps": steps[:1]})
    assert policy.matches({"types": ["builtins.TimeoutError", "builtins.OSError"]})
    assert not policy.matches(None) and not policy.matches({})
    assert not RetryPolicy().matches({"steps": [{"types": ["builtins.KeyboardInterrupt"]}]})


def test_abort_of_a_run_waiting_for_its_restart_keeps_it_failed(store):
    flaky = Flaky(failures=1)
    clock = ManualClock()
    with Registry(clock=clock, supervision=RetryPolicy(backoff=5.0)) as registry:
        factory = PipelineFactory(three_stages(flaky), store=store, registry=registry)
        run = factory.prepare()
        future = run.start()
        wait_for_stats(registry, retrying=1)
        run.abort("the operator gave up")
        assert future.result(10).status == "failed"
        advance(clock, 5.0, registry)
        stats = wait_for_stats(registry, retrying=0, failed=1)
    assert stats["restarts"] == 0 and flaky.runs["b"] == 1
    assert store.get_run(run.run_id).status == "failed"
    assert RetryPolicy(retry_on=[ValueError, KeyError]).retry_on == (ValueError, KeyError)


@given(
    backoff=st.floats(0, 100, allow_nan=False),
    cap=st.floats(0, 1000, allow_nan=False),
    n=st.integers(1, 40),
)
def test_prop_restart_delays_double_up_to_the_cap(backoff, cap, n):
    policy = RetryPolicy(max_restarts=50, backoff=backoff, max_backoff=cap)
    assert policy.delay(n) == min(backoff * 2 ** (n - 1), cap)
    assert policy.delay(n) <= policy.delay(n + 1) <= cap


def test_wait_needs_a_started_run(store):
    run = PipelineFactory(three_stages(Flaky()), store=store).prepare()
    with pytest.raises(RunStateError, match="not started"):
        run.wait(1)
