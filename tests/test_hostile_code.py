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
from invariants import check_run

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
    # Once the stuck step returns, the pool is one thread over its bound, and the next
    # thread to finish a job retires: the one that ran the stuck step, unless a step of
    # another run finished at that very moment. Either way the pool is back to its size.
    stuck[0].join(10)
    for thread in [t for t in threading.enumerate() if t.name == "stageline-step"]:
        if step_threads() == baseline:
            break
        thread.join(0.2)  # bounded: a retiring thread ends within moments
    assert step_threads() == baseline
    assert store.get_run(run.run_id).state == {}


def quick_pipeline(pipeline_id: str = "quick") -> Pipeline:
    return Pipeline(pipeline_id, [Stage("s", 1, steps=[Step("w", lambda s, c: {"ok": True})])])


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_base_exceptions_from_async_steps_routers_and_handlers_fail_only_their_stage(store, exc):
    async def async_bad(state, ctx):
        raise exc

    def handler(event):
        raise exc

    async_stage = Pipeline("a", [Stage("s", 1, steps=[Step("bad", async_bad)])])
    router_stage = Pipeline(
        "r",
        [
            Stage(
                "s",
                1,
                steps=[Step("w", lambda s, c: None)],
                router=lambda s, r: (_ for _ in ()).throw(exc),
            )
        ],
    )
    for pipeline in (async_stage, router_stage):
        run = PipelineFactory(pipeline, store=store).prepare()
        run.on("*", handler)  # raises the same at every event: logged, ignored
        result = run.run(timeout=10)
        assert result.status == "failed", pipeline.id
        assert type(exc).__name__ in str(result.error)
        assert store.get_run(run.run_id).status == "failed"

    # the runtime, its event loop included, still serves runs
    async def fine(state, ctx):
        return {"ok": True}

    again = Pipeline("again", [Stage("s", 1, steps=[Step("fine", fine)])])
    assert PipelineFactory(again, store=store).prepare().run(timeout=10).ok


def test_an_async_step_that_blocks_the_event_loop_is_timed_out_and_sync_runs_go_on(store):
    """An `async def` step calling a blocking function (time.sleep, a sync driver) holds
    the one event loop thread. Its timeout still fires (timers are another thread), the
    run fails with StepTimeout, and runs of sync steps are not affected. Other async steps
    wait for the loop until the blocking call returns (docs/guarantees.md)."""
    clock = ManualClock()
    release = threading.Event()
    entered = threading.Event()

    async def blocking(state, ctx):
        entered.set()
        release.wait(30)  # a blocking call inside a coroutine: the whole loop stops
        return {"late": True}

    async def polite(state, ctx):
        return {"polite": True}

    blocker = Pipeline("blocker", [Stage("s", 1, steps=[Step("block", blocking, timeout=2.0)])])
    waiting = Pipeline("waiting", [Stage("s", 1, steps=[Step("polite", polite)])])
    factory = PipelineFactory(blocker, store=store, clock=clock)
    run = factory.prepare()
    future = run.start()
    assert entered.wait(10)
    stalled = PipelineFactory(waiting, store=store, clock=clock).prepare().start()
    advance(clock, 2.0)
    result = future.result(10)
    assert result.status == "failed" and "StepTimeout" in str(result.error)
    assert PipelineFactory(quick_pipeline(), store=store, clock=clock).prepare().run(timeout=10).ok
    assert not stalled.done()  # behind the blocked loop
    release.set()
    assert stalled.result(10).state == {"polite": True}
    assert store.get_run(run.run_id).state == {}  # the late patch is never committed


@pytest.mark.parametrize("where", ["router", "handler"])
def test_a_hanging_router_or_handler_holds_only_its_own_run(store, where):
    """Routers and event handlers run on the run's actor thread: one that hangs holds that
    run (even its abort waits until it returns), never another run. Once it returns the
    abort is honoured at once: the run ends aborted and nothing after that is committed."""
    release = threading.Event()
    entered = threading.Event()

    def hang(*args):
        entered.set()
        release.wait(30)

    router = hang if where == "router" else None
    pipeline = Pipeline(
        "hangs",
        [
            Stage("s1", 1, steps=[Step("w", lambda s, c: {"s1": True})], router=router),
            Stage("s2", 2, steps=[Step("w", lambda s, c: {"s2": True})]),
        ],
    )
    run = PipelineFactory(pipeline, store=store).prepare()
    if where == "handler":
        run.on("stage:success", hang)
    future = run.start()
    assert entered.wait(10)
    for i in range(5):  # other runs, same store and runtime, go on
        assert (
            PipelineFactory(quick_pipeline(f"other{i}"), store=store).prepare().run(timeout=10).ok
        )
    run.abort("stuck")  # queued behind the hanging call
    assert not future.done()
    release.set()
    result = future.result(10)
    assert result.status == "aborted"
    info = store.get_run(run.run_id)
    assert info.status == "aborted" and "s2" not in info.state
    check_run(store, run.run_id)


def test_huge_patches_are_committed_whole_or_the_step_fails_clearly(store):
    """A 32 MiB patch (one big bytes value and 200,000 small keys) commits and reads back;
    a patch nested deeper than the storable depth fails its step with a clear message."""
    wide = {f"k{i}": i for i in range(200_000)}
    big = Pipeline(
        "big",
        [
            Stage("s1", 1, steps=[Step("blob", lambda s, c: {"blob": b"\x01" * (32 << 20)})]),
            Stage("s2", 2, steps=[Step("wide", lambda s, c: {"wide": wide})]),
        ],
    )
    result = PipelineFactory(big, store=store).prepare().run(timeout=60)
    assert result.ok
    info = store.get_run(result.run_id)
    assert len(info.state["blob"]) == 32 << 20 and info.state["wide"] == wide

    deep: dict = {}
    node = deep
    for _ in range(1_000):
        node["d"] = {}
        node = node["d"]
    too_deep = Pipeline("deep", [Stage("s", 1, steps=[Step("deep", lambda s, c: deep)])])
    result = PipelineFactory(too_deep, store=store).prepare().run(timeout=10)
    assert result.status == "failed" and "nested deeper than" in str(result.error)


def test_registry_stop_does_not_wait_for_a_hanging_router(store):
    """stop(timeout) gives up on a run whose router hangs: its future fails, the run stays
    at its last commit (recoverable), and stop returns; the router's late answer can only
    commit whole (compare-and-set), as any late commit."""
    from stageline import Registry, RunStateError

    release = threading.Event()
    entered = threading.Event()

    def hang(state, results):
        entered.set()
        release.wait(30)

    pipeline = Pipeline(
        "hangs",
        [
            Stage("s1", 1, steps=[Step("w", lambda s, c: {"s1": True})], router=hang),
            Stage("s2", 2, steps=[Step("w", lambda s, c: {"s2": True})]),
        ],
    )
    registry = Registry()
    run = PipelineFactory(pipeline, store=store, registry=registry).prepare()
    future = run.start()
    assert entered.wait(10)
    stopping = threading.Thread(target=registry.stop, kwargs={"timeout": 0.5})
    stopping.start()
    stopping.join(20)
    try:
        assert not stopping.is_alive(), "registry.stop waited for the hanging router"
        with pytest.raises(RunStateError, match=r"registry\.stop"):
            future.result(10)
        info = store.get_run(run.run_id)
        assert (info.status, info.stage, info.state) == ("running", "s1", {})
        check_run(store, run.run_id)
    finally:
        release.set()
