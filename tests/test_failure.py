"""Timeouts, retries, backoff and abort, driven by a manual clock: no test sleeps."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stageline import (
    ManualClock,
    Pipeline,
    PipelineFactory,
    RunAborted,
    Stage,
    StageError,
    Step,
    StepTimeout,
)

pytestmark = pytest.mark.timeout(30)


def factory_for(pipeline, store, **kwargs):
    clock = ManualClock()
    return PipelineFactory(pipeline, store=store, clock=clock, **kwargs), clock


def test_step_timeout_fails_the_step_and_signals_it(store, recorder):
    released = threading.Event()
    saw_abort = threading.Event()
    running = threading.Event()

    def hang(state, ctx):
        running.set()
        if ctx.aborted.wait(20):
            saw_abort.set()
        released.wait(20)
        return {"late": True}

    pipeline = Pipeline(
        "p", [Stage("ship", 1, label="Ship", steps=[Step("notify", hang, timeout=5.0)])]
    )
    factory, clock = factory_for(pipeline, store)
    run = factory.prepare()
    run.on("*", recorder)
    future = run.start()
    assert running.wait(10)
    clock.advance(4.9)
    assert not future.done()
    clock.advance(0.1)
    result = future.result(10)
    released.set()
    assert result.status == "failed"
    assert str(result.error) == "1 step(s) failed in Ship:ship: notify: StepTimeout(5.0s)"
    assert result.error.steps[0].type == "StepTimeout"
    assert saw_abort.wait(10)
    assert store.get_run(run.run_id).state == {}


def test_ctx_deadline_is_set_from_the_timeout(store):
    seen = {}

    def look(state, ctx):
        seen["deadline"] = ctx.deadline
        seen["now"] = clock.monotonic()
        return None

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("look", look, timeout=7.5)])])
    factory, clock = factory_for(pipeline, store)
    factory.prepare().run(timeout=10)
    assert seen["deadline"] == pytest.approx(seen["now"] + 7.5)


def test_retries_with_exponential_backoff(store, recorder):
    attempts = []

    def flaky(state, ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return {"done": ctx.attempt}

    pipeline = Pipeline(
        "p", [Stage("s", 1, steps=[Step("flaky", flaky, retries=2, retry_backoff=1.0)])]
    )
    factory, clock = factory_for(pipeline, store)
    run = factory.prepare()
    run.on("*", recorder)
    future = run.start()
    recorder.wait_for("step:retry", attempt=1)
    clock.advance(0.99)
    assert attempts == [1]
    clock.advance(0.01)  # backoff 1.0 * 2**0
    recorder.wait_for("step:retry", attempt=2)
    clock.advance(1.99)
    assert attempts == [1, 2]
    clock.advance(0.01)  # backoff 1.0 * 2**1
    result = future.result(10)
    assert result.status == "succeeded" and result.state == {"done": 3}
    retries = recorder.of("step:retry")
    assert [e.attempt for e in retries] == [1, 2]
    assert isinstance(retries[0].error, ConnectionError)


def test_backoff_is_capped_at_sixty_seconds():
    step = Step("s", lambda s, c: None, retries=10, retry_backoff=1.0)
    assert [step.backoff(n) for n in (1, 2, 3, 7, 8)] == [1.0, 2.0, 4.0, 60.0, 60.0]


def test_exhausted_retries_fail_with_each_attempt_counted(store):
    def always(state, ctx):
        raise ValueError("no address")

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("label", always, retries=2)])])
    factory, _ = factory_for(pipeline, store)
    result = factory.prepare().run(timeout=10)
    assert result.status == "failed"
    assert result.error.steps[0].attempts == 3


def test_timeout_then_retry_succeeds(store, recorder):
    gate = threading.Event()

    def slow_first(state, ctx):
        if ctx.attempt == 1:
            ctx.aborted.wait(20)
            gate.wait(20)
            return {"from": "first"}
        return {"from": "second"}

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("s", slow_first, timeout=2.0, retries=1)])])
    factory, clock = factory_for(pipeline, store)
    run = factory.prepare()
    run.on("*", recorder)
    future = run.start()
    recorder.wait_for("step:start")
    clock.advance(2.0)
    result = future.result(10)
    gate.set()
    assert result.state == {"from": "second"}  # the late first attempt is discarded
    assert isinstance(recorder.of("step:retry")[0].error, StepTimeout)


def test_async_step_timeout_cancels_the_coroutine(store, recorder):
    cancelled = threading.Event()

    async def forever(state, ctx):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("forever", forever, timeout=1.0)])])
    factory, clock = factory_for(pipeline, store)
    run = factory.prepare()
    run.on("*", recorder)
    future = run.start()
    recorder.wait_for("step:start")
    clock.advance(1.0)
    assert future.result(10).status == "failed"
    assert cancelled.wait(10)


def test_stage_timeout(store, recorder):
    gate = threading.Event()
    pipeline = Pipeline(
        "p",
        [Stage("s", 1, timeout=3.0, steps=[Step("a", lambda s, c: gate.wait(20) and None)])],
    )
    factory, clock = factory_for(pipeline, store)
    run = factory.prepare()
    run.on("*", recorder)
    future = run.start()
    recorder.wait_for("stage:start")
    clock.advance(3.0)
    result = future.result(10)
    gate.set()
    assert result.status == "failed"
    assert isinstance(result.error, StageError) and "timeout of 3.0s" in str(result.error)


def test_abort_is_prompt_and_does_not_wait_for_a_stuck_step(store, recorder):
    never = threading.Event()
    signalled = threading.Event()
    running = threading.Event()

    def stuck(state, ctx):
        running.set()
        while not ctx.aborted.wait(0.01):
            pass
        signalled.set()
        never.wait(20)  # ignores the signal: a stuck thread
        return {"late": True}

    pipeline = Pipeline(
        "p",
        [
            Stage("first", 1, steps=[Step("ok", lambda s, c: {"first": 1})]),
            Stage("second", 2, steps=[Step("stuck", stuck)]),
        ],
    )
    factory, _ = factory_for(pipeline, store)
    run = factory.prepare()
    run.on("*", recorder)
    future = run.start()
    assert running.wait(10)
    run.abort("operator said stop")
    result = future.result(10)
    never.set()
    assert result.status == "aborted"
    assert isinstance(result.error, RunAborted) and result.error.kind == "aborted"
    assert "operator said stop" in str(result.error)
    assert result.state == {"first": 1}
    assert signalled.wait(10)
    after_abort = recorder.names()[recorder.names().index("step:start", 3) + 1 :]
    assert after_abort == ["pipeline:failure"]
    info = store.get_run(run.run_id)
    assert info.status == "aborted" and info.state == {"first": 1}
    assert store.read_events(run.run_id)[-1].error.kind == "aborted"


def test_abort_before_start(store):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("a", lambda s, c: {"a": 1})])])
    factory, _ = factory_for(pipeline, store)
    run = factory.prepare()
    run.abort()
    assert store.get_run(run.run_id).status == "aborted" or run.status in ("pending", "aborted")
    assert run._run.future.result(10).status == "aborted"
    assert store.get_run(run.run_id).status == "aborted"


def test_stuck_steps_do_not_starve_other_runs(store, recorder):
    gate = threading.Event()
    stuck = Pipeline(
        "stuck",
        [Stage("s", 1, steps=[Step("x", lambda s, c: gate.wait(30) and None, timeout=1.0)])],
    )
    quick = Pipeline("quick", [Stage("s", 1, steps=[Step("x", lambda s, c: {"ok": 1})])])
    factory, clock = factory_for(stuck, store)
    from stageline.actors.workers import shared_workers

    runs = [factory.prepare() for _ in range(shared_workers().max_threads + 2)]
    for run in runs:
        run.on("stage:start", recorder)
    futures = [run.start() for run in runs]
    recorder.wait_for("stage:start", count=len(runs))
    quick_factory = PipelineFactory(quick, store=store)
    # the pool is full of stuck steps; after their timeouts, quick runs still get threads
    clock.advance(1.0)
    for future in futures:
        assert future.result(10).status == "failed"
    assert quick_factory.prepare().run(timeout=10).status == "succeeded"
    gate.set()
