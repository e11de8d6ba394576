"""Misbehaving user code (issue 9): the runtime keeps its guarantees, other runs keep going.

Steps that never return, block the event loop, raise BaseException or exceptions whose
repr/str raise, mutate what they were given or return huge patches; routers and event
handlers that raise or hang. Each test says what the runtime promises in that case (see
docs/guarantees.md).
"""

from __future__ import annotations

import logging
import threading

import pytest

from stageline import ManualClock, Pipeline, PipelineFactory, Stage, Step
from stageline.actors.workers import shared_workers
from stageline.testing import advance

pytestmark = pytest.mark.timeout(60)


class Hostile(Exception):
    """An exception whose repr() and str() raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    def __str__(self) -> str:
        raise RuntimeError("str refused")


class HostileHandler:
    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    def __call__(self, event) -> None:
        raise Hostile()


def raise_hostile(state, ctx):
    raise Hostile()


@pytest.mark.parametrize("where", ["step", "router"])
def test_an_exception_whose_repr_raises_fails_the_stage_not_the_runtime(store, where, caplog):
    """Was: repr() of the step's or router's exception raised inside the run's actor, which
    then died with an InternalError and left the run "running" instead of "failed"."""
    if where == "step":
        stage = Stage("s", 1, steps=[Step("bad", raise_hostile, retries=1)])
    else:
        stage = Stage(
            "s",
            1,
            steps=[Step("ok", lambda s, c: None)],
            router=lambda s, r: raise_hostile(s, None),
        )
    run = PipelineFactory(Pipeline("p", [stage]), store=store).prepare()
    run.on("*", HostileHandler())  # a handler that raises one too, and has no repr either
    with caplog.at_level(logging.DEBUG, logger="stageline"):  # log lines format the error
        result = run.run(timeout=10)
    assert result.status == "failed"
    assert "Hostile (its repr() raised)" in str(result.error)
    assert store.get_run(run.run_id).status == "failed"
    assert any("handler_failed" in r.getMessage() for r in caplog.records)


def test_handlers_and_steps_mutating_what_they_were_given_never_touch_the_state(store):
    """Was: the merged state shared lists and dicts with the step's returned patch and with
    the `results` of stage events, so a handler mutating `event.results` (or a step mutating
    a list it returned, or its state copy, later) changed the run's committed state in
    memory, and the next stage committed the damage."""
    kept: list = [1, 2]  # a step returns it, then keeps mutating it

    def first(state, ctx):
        state["injected"] = True  # its private copy: no effect
        return {"items": kept, "d": {"x": 1}}

    def second(state, ctx):
        kept.append("late")
        return {
            "seen": list(state["items"]),
            "d_seen": dict(state["d"]),
            "saw": "injected" in state,
        }

    pipeline = Pipeline(
        "p",
        [Stage("s1", 1, steps=[Step("w", first)]), Stage("s2", 2, steps=[Step("v", second)])],
    )

    def vandal(event):
        if event.stage_id == "s1":
            event.results["w"]["items"].append("evil")
            event.results["w"]["d"]["x"] = "evil"

    run = PipelineFactory(pipeline, store=store).prepare()
    run.on("stage:success", vandal)
    result = run.run(timeout=10)
    expected = {"items": [1, 2], "d": {"x": 1}, "seen": [1, 2], "d_seen": {"x": 1}, "saw": False}
    assert result.state == expected
    assert store.get_run(run.run_id).state == expected
    [s1] = [
        e for e in store.read_events(run.run_id) if e.name == "stage:success" and e.stage_id == "s1"
    ]
    assert s1.results == {"w": {"items": [1, 2], "d": {"x": 1}}}


def warm_pool() -> int:
    """Grow the shared step pool to its bound; return how many step threads are alive."""
    workers = shared_workers()
    barrier = threading.Barrier(workers.max_threads + 1)
    for _ in range(workers.max_threads):
        workers.submit(lambda: barrier.wait(10))
    barrier.wait(10)
    return step_threads()


def step_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "stageline-step")


def test_a_step_that_never_returns_times_out_and_its_thread_retires_when_it_does(store):
    """Was: the pool added a thread for each abandoned step and never gave it back, so
    every timed-out or aborted step left one more idle thread behind for good."""
    baseline = warm_pool()
    clock = ManualClock()
    release = threading.Event()
    entered = threading.Event()
    stuck: list[threading.Thread] = []

    def hang(state, ctx):
        stuck.append(threading.current_thread())
        entered.set()
        release.wait(30)  # ignores ctx.aborted, like a stuck network call
        return {"late": True}

    hung = Pipeline("hung", [Stage("s", 1, steps=[Step("hang", hang, timeout=5.0)])])
    factory = PipelineFactory(hung, store=store, clock=clock)
    run = factory.prepare()
    future = run.start()
    assert entered.wait(10)
    advance(clock, 5.0)
    result = future.result(10)
    assert result.status == "failed" and "StepTimeout" in str(result.error)
    assert store.get_run(run.run_id).state == {}  # the late patch is never committed
    # the stuck thread does not starve anyone: a full pool's worth of runs still completes
    busy = Pipeline(
        "busy", [Stage("s", 1, steps=[Step(f"w{i}", lambda s, c: None) for i in range(16)])]
    )
    assert PipelineFactory(busy, store=store).prepare().run(timeout=10).ok
    assert step_threads() == baseline + 1  # one more, for as long as the step is stuck
    release.set()
    stuck[0].join(10)  # the thread that ran it is the surplus one: it retires
    assert not stuck[0].is_alive()
    assert step_threads() == baseline
    assert store.get_run(run.run_id).state == {}
