"""Regressions for races and edge cases found in review (abort, pause, shutdown, aliasing)."""

from __future__ import annotations

import threading

import pykka
import pytest

from stageline import (
    ArtifactError,
    ManualClock,
    Pause,
    Pipeline,
    PipelineFactory,
    Registry,
    RunNotPaused,
    RunStateError,
    Stage,
    Step,
)
from stageline.actors.container import ContainerActor
from stageline.testing import EventRecorder, advance

pytestmark = pytest.mark.timeout(30)


def pausing(extra_steps=()):
    return Pipeline(
        "p",
        [
            Stage("a", 1, steps=[Step("a", lambda s, c: {"a": {"n": 1}}), *extra_steps],
                  router=lambda s, r: Pause("b", timeout=999)),
            Stage("b", 2, steps=[Step("b", lambda s, c: {"b": 1})]),
        ],
    )  # fmt: skip


def test_abort_a_paused_run_is_one_compare_and_set(store):
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(pausing(), store=store, registry=registry)
        run = factory.prepare()
        events = EventRecorder(run)
        run.run(10)
        run.abort("changed my mind")
        assert run.status == "aborted"
        assert store.get_run(run.run_id).status == "aborted"
        assert store.get_run(run.run_id).checkpoint is None
        assert events.names()[-1] == "pipeline:failure"
        assert [e.name for e in store.read_events(run.run_id)][-1] == "pipeline:failure"
        with pytest.raises(RunNotPaused):
            factory.resume(run.run_id)
        assert registry.stats()["live"] == 0


def test_abort_of_a_paused_run_resumed_elsewhere_is_refused(store):
    with Registry(clock=ManualClock()) as registry:
        run = PipelineFactory(pausing(), store=store, registry=registry).prepare()
        run.run(10)
        PipelineFactory(pausing(), store=store).resume(run.run_id).run(10)
        with pytest.raises(RunNotPaused):
            run.abort()
    assert store.get_run(run.run_id).status == "succeeded"


def test_abort_while_the_run_is_pausing_is_not_lost(store):
    with Registry(clock=ManualClock()) as registry:
        run = PipelineFactory(pausing(), store=store, registry=registry).prepare()
        run.on("pipeline:paused", lambda e: run.abort("from a handler"))
        run.run(10)
        assert store.get_run(run.run_id).status == "aborted"


def test_results_and_events_never_alias_committed_state(store):
    seen = []
    factory = PipelineFactory(pausing(), store=store)
    run = factory.prepare()
    run.on("pipeline:paused", lambda e: seen.append(e.state))
    result = run.run(10)
    result.state["a"]["n"] = -1
    seen[0]["a"]["n"] = -2
    assert store.get_run(run.run_id).state == {"a": {"n": 1}}
    final = factory.resume(run.run_id).run(10)
    assert final.state["a"] == {"n": 1}


def test_an_abandoned_attempt_cannot_touch_artifacts(store):
    gate = threading.Event()
    outcome = {}

    def slow(state, ctx):
        ctx.artifacts.put("early", 1)  # while the attempt counts: the run's actor starts
        running.set()
        gate.wait(10)
        try:
            ctx.artifacts.put("late", 1)
        except ArtifactError as exc:
            outcome["error"] = str(exc)
        finally:
            outcome["done"] = True
            done.set()
        return None

    done = threading.Event()
    running = threading.Event()
    clock = ManualClock()
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("slow", slow, timeout=1.0)])])
    factory = PipelineFactory(pipeline, store=store, clock=clock)
    run = factory.prepare()
    events = EventRecorder(run)
    before = set(pykka.ActorRegistry.get_by_class(ContainerActor))
    future = run.start()
    events.wait_for("step:start")
    assert running.wait(10)
    assert set(pykka.ActorRegistry.get_by_class(ContainerActor)) - before, "no actor to stop"
    advance(clock, 1.0)
    assert future.result(10).status == "failed"
    gate.set()
    assert done.wait(10)
    assert "abandoned" in outcome["error"] and "'slow'" in outcome["error"]
    # the failed run stopped its artifacts' actor, and the late access started none again
    # (pykka unregisters an actor before `stop(block=True)` returns)
    left = set(pykka.ActorRegistry.get_by_class(ContainerActor)) - before
    assert not left, f"the ended run left its ContainerActor running: {left}"


def test_persist_with_oversized_artifacts_fails_the_stage_cleanly(store):
    def big(state, ctx):
        ctx.artifacts.put("blob", b"x" * 4096)
        return {"a": 1}

    pipeline = Pipeline(
        "p",
        [
            Stage("a", 1, steps=[Step("big", big)],
                  router=lambda s, r: Pause("b", persist=True)),
            Stage("b", 2, steps=[Step("b", lambda s, c: None)]),
        ],
    )  # fmt: skip
    factory = PipelineFactory(pipeline, store=store, max_bundle_bytes=1024)
    result = factory.prepare().run(10)
    assert result.status == "failed"
    assert "max_bundle_bytes=1024" in str(result.error)
    info = store.get_run(result.run_id)
    assert info.status == "failed" and info.state == {}
    assert [e.name for e in store.read_events(result.run_id)][-1] == "pipeline:failure"


def test_fast_path_needs_the_same_pipeline_version(store):
    with Registry(clock=ManualClock()) as registry:
        run = PipelineFactory(pausing(), store=store, registry=registry).prepare()
        run.run(10)
        v2 = Pipeline("p", pausing().stages, version=2)
        from stageline import CheckpointMismatch

        with pytest.raises(CheckpointMismatch):
            PipelineFactory(v2, store=store, registry=registry).resume(run.run_id)


def test_starting_a_run_on_a_stopped_registry_is_refused(store):
    registry = Registry(clock=ManualClock())
    factory = PipelineFactory(pausing(), store=store, registry=registry)
    registry.stop()
    run = factory.prepare()
    with pytest.raises(RunStateError, match="registry was stopped"):
        run.run(10)


def test_registry_stop_past_its_deadline_still_exports_and_ends_futures(store):
    gate = threading.Event()
    started = threading.Event()

    def stuck(state, ctx):
        started.set()
        gate.wait(20)
        return None

    registry = Registry(clock=ManualClock())
    paused = PipelineFactory(pausing(), store=store, registry=registry).prepare()
    paused.run(10)
    busy = PipelineFactory(
        Pipeline("busy", [Stage("s", 1, steps=[Step("stuck", stuck)])]),
        store=store,
        registry=registry,
    ).prepare()
    future = busy.start()
    assert started.wait(10)
    registry.stop(timeout=0.2)
    with pytest.raises(RunStateError, match=r"registry\.stop"):
        future.result(10)
    gate.set()
    assert store.get_run(busy.run_id).status == "running"
    from stageline import read_checkpoint

    assert read_checkpoint(store, "p", paused.run_id).container_bundle is not None


def test_a_sibling_waiting_for_its_retry_keeps_its_own_error(store):
    clock = ManualClock()

    def flaky(state, ctx):
        raise ConnectionError(f"flaky attempt {ctx.attempt}")

    fail_later = threading.Event()

    def boom(state, ctx):
        fail_later.wait(10)
        raise ValueError("boom")

    pipeline = Pipeline(
        "p",
        [Stage("s", 1, steps=[Step("flaky", flaky, retries=3, retry_backoff=100.0),
                              Step("boom", boom)])],
    )  # fmt: skip
    run = PipelineFactory(pipeline, store=store, clock=clock).prepare()
    events = EventRecorder(run)
    future = run.start()
    events.wait_for("step:retry", step_id="flaky")
    fail_later.set()
    result = future.result(10)  # no need to wait out the 100 s backoff
    by_step = {f.step_id: f for f in result.error.steps}
    assert by_step["flaky"].type == "ConnectionError"
    assert "flaky attempt 1" in by_step["flaky"].message
    assert by_step["flaky"].traceback


def test_a_sibling_without_timeout_that_ignores_abort_does_not_hold_the_stage(store):
    gate = threading.Event()

    def ignores(state, ctx):
        gate.wait(20)
        return None

    def boom(state, ctx):
        raise ValueError("boom")

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("ignores", ignores), Step("boom", boom)])])
    result = PipelineFactory(pipeline, store=store).prepare().run(10)
    gate.set()
    assert result.status == "failed"
    assert [f.step_id for f in result.error.steps] == ["boom"]
