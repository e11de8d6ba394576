"""The engine through the public API, on every store: stages, merge, routing, failure."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stageline import (
    DELETE,
    PIPELINE_DATA_KEY,
    TERMINATE,
    Pipeline,
    PipelineFactory,
    RoutingError,
    RunExistsError,
    RunStateError,
    Stage,
    StageError,
    Step,
)

pytestmark = pytest.mark.timeout(30)


def const(patch):
    return lambda state, ctx: patch


def test_one_stage_runs_and_commits(store, recorder):
    pipeline = Pipeline("p", [Stage("only", 1, steps=[Step("s", const({"x": 1}))])])
    factory = PipelineFactory(pipeline, store=store, initial_state={"n": 0})
    run = factory.prepare()
    run.on("*", recorder)
    result = run.run(timeout=10)
    assert result.status == "succeeded"
    assert result.state == {"n": 0, "x": 1}
    assert run.status == "succeeded"
    info = store.get_run(run.run_id)
    assert info.status == "succeeded" and info.state == {"n": 0, "x": 1}
    assert recorder.names() == [
        "pipeline:start",
        "stage:start",
        "step:start",
        "step:success",
        "stage:success",
        "pipeline:success",
    ]
    assert [e.seq for e in recorder.events] == sorted(e.seq for e in recorder.events)
    journal = [e.name for e in store.read_events(run.run_id)]
    assert journal == ["pipeline:start", "stage:start", "stage:success", "pipeline:success"]


def test_steps_run_concurrently_and_merge_in_definition_order(store):
    both_started = threading.Barrier(2, timeout=5)

    def first(state, ctx):
        both_started.wait()
        return {"winner": "first", "a": {"x": 1}}

    def second(state, ctx):
        both_started.wait()  # only passes if `first` runs at the same time
        return {"winner": "second", "a": {"y": 2}}

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("first", first), Step("second", second)])])
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "succeeded", result.error
    assert result.state == {"winner": "second", "a": {"x": 1, "y": 2}}


def test_steps_get_private_copies_of_stage_start_state(store):
    def mutate(state, ctx):
        state["shared"]["x"] = "mutated"
        return {"seen_by_mutate": state["shared"]["x"]}

    def read(state, ctx):
        return {"seen_by_read": state["shared"]["x"]}

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("mutate", mutate), Step("read", read)])])
    factory = PipelineFactory(pipeline, store=store, initial_state={"shared": {"x": "orig"}})
    result = factory.prepare().run(timeout=10)
    assert result.state["shared"] == {"x": "orig"}
    assert result.state["seen_by_read"] == "orig"


def test_delete_removes_keys(store):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("d", const({"gone": DELETE}))])])
    factory = PipelineFactory(pipeline, store=store, initial_state={"gone": 1, "kept": 2})
    result = factory.prepare().run(timeout=10)
    assert result.state == {"kept": 2}
    assert store.read_events(result.run_id)[2].results == {"d": {"gone": DELETE}}


def test_async_steps_run_on_the_event_loop(store):
    async def fetch(state, ctx):
        await asyncio.sleep(0)
        return {"fetched": threading.current_thread().name}

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("fetch", fetch)])])
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.state == {"fetched": "stageline-asyncio"}


def test_router_jump_loop_and_terminate(store):
    def count(state, ctx):
        return {"n": state["n"] + 1}

    def loop(state, results):
        assert results == {"inc": {"n": state["n"]}}
        return "inc" if state["n"] < 3 else TERMINATE

    pipeline = Pipeline(
        "p",
        [
            Stage("inc", 1, steps=[Step("inc", count)], router=loop),
            Stage("never", 2, steps=[Step("x", const({"never": True}))]),
        ],
    )
    factory = PipelineFactory(pipeline, store=store, initial_state={"n": 0})
    result = factory.prepare().run(timeout=10)
    assert result.status == "succeeded"
    assert result.state == {"n": 3}


def test_decision_stage_without_steps(store):
    pipeline = Pipeline(
        "p",
        [
            Stage("decide", 1, router=lambda state, results: "b" if state["go"] else None),
            Stage("a", 2, steps=[Step("a", const({"a": 1}))], router=lambda s, r: TERMINATE),
            Stage("b", 3, steps=[Step("b", const({"b": 1}))]),
        ],
    )
    factory = PipelineFactory(pipeline, store=store, initial_state={"go": True})
    assert factory.prepare().run(timeout=10).state == {"go": True, "b": 1}


def test_unknown_jump_fails_run_with_routing_error(store):
    pipeline = Pipeline(
        "p",
        [
            Stage("a", 1, steps=[Step("a", const({"a": 1}))], router=lambda s, r: "nowhere"),
            Stage("b", 2, steps=[Step("b", const({"b": 1}))]),
        ],
    )
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "failed"
    assert isinstance(result.error, RoutingError)
    message = str(result.error)
    assert "'a'" in message and "'nowhere'" in message and "a, b" in message
    assert result.state == {}
    assert store.get_run(result.run_id).stage == "a"


def test_runaway_loop_is_stopped(store):
    pipeline = Pipeline(
        "p",
        [Stage("spin", 1, steps=[Step("s", const(None))], router=lambda s, r: "spin")],
        max_stage_runs=5,
    )
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "failed"
    assert isinstance(result.error, RoutingError)
    assert "max_stage_runs=5" in str(result.error)


def test_router_that_raises_fails_the_stage_without_committing(store):
    def bad_router(state, results):
        raise KeyError("missing")

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("s", const({"x": 1}))], router=bad_router)])
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "failed"
    assert isinstance(result.error, StageError)
    assert "router" in str(result.error) and "KeyError" in str(result.error)
    assert result.state == {}
    assert store.get_run(result.run_id).state == {}


def test_failed_stage_commits_nothing_and_keeps_last_commit(store, recorder):
    def boom(state, ctx):
        raise ValueError("no address")

    pipeline = Pipeline(
        "p",
        [
            Stage("first", 1, steps=[Step("ok", const({"first": True}))]),
            Stage(
                "ship", 2, label="Ship", steps=[Step("label", boom), Step("fine", const({"x": 1}))]
            ),
        ],
    )
    run = PipelineFactory(pipeline, store=store).prepare()
    run.on("*", recorder)
    result = run.run(timeout=10)
    assert result.status == "failed"
    assert result.state == {"first": True}
    assert str(result.error) == "1 step(s) failed in Ship:ship: label: ValueError('no address')"
    [failure] = result.error.steps
    assert failure.type == "ValueError" and "no address" in failure.traceback
    info = store.get_run(result.run_id)
    assert info.status == "failed" and info.stage == "ship" and info.state == {"first": True}
    assert recorder.names()[-1] == "pipeline:failure"
    journal = [e.name for e in store.read_events(result.run_id)]
    assert journal[-3:] == ["stage:start", "stage:failure", "pipeline:failure"]
    assert store.read_events(result.run_id)[-1].error.kind == "stage"


def test_every_failed_step_is_reported(store):
    notify_started = threading.Event()

    def boom(state, ctx):
        notify_started.wait(5)
        raise ValueError("no address")

    def late_boom(state, ctx):
        notify_started.set()
        ctx.aborted.wait(5)  # signalled when the sibling has failed
        raise RuntimeError("stopped early")

    pipeline = Pipeline(
        "p",
        [
            Stage(
                "ship",
                1,
                label="Ship",
                steps=[Step("label", boom), Step("notify", late_boom, timeout=30.0)],
            )
        ],
    )
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert str(result.error) == (
        "2 step(s) failed in Ship:ship: label: ValueError('no address'); "
        "notify: RuntimeError('stopped early')"
    )
    assert [s.step_id for s in result.error.steps] == ["label", "notify"]


def test_a_sibling_not_yet_started_when_the_stage_fails_never_runs(store):
    from stageline.actors.workers import shared_workers

    gate = threading.Event()
    ran = []
    blockers = [
        Step(f"block{i}", lambda s, c: gate.wait(10) and None)
        for i in range(shared_workers().max_threads)
    ]

    def boom(state, ctx):
        raise ValueError("first")

    def late(state, ctx):
        ran.append(True)
        return None

    # boom runs on the asyncio loop; the blockers fill every worker thread; `late` queues
    async def async_boom(state, ctx):
        boom(state, ctx)

    pipeline = Pipeline(
        "p", [Stage("s", 1, steps=[*blockers, Step("boom", async_boom), Step("late", late)])]
    )
    future = PipelineFactory(pipeline, store=store).prepare().start()
    gate.set()
    result = future.result(10)
    assert [f.step_id for f in result.error.steps] == ["boom"]


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()])
def test_base_exceptions_in_a_step_fail_only_that_step(store, exc):
    def bad(state, ctx):
        raise exc

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("bad", bad)])])
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "failed"
    assert type(exc).__name__ in str(result.error)
    # the runtime is still alive: another run works
    again = Pipeline("q", [Stage("s", 1, steps=[Step("ok", const({"ok": 1}))])])
    assert PipelineFactory(again, store=store).prepare().run(timeout=10).status == "succeeded"


def test_unstorable_patch_names_key_path_and_type(store):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("bad", const({"a": {"b": {1, 2}}}))])])
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "failed"
    message = str(result.error)
    assert "'a.b'" in message and "set" in message and "'bad'" in message


def test_reserved_key_is_refused(store):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("bad", const({PIPELINE_DATA_KEY: 1}))])])
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "failed"
    assert PIPELINE_DATA_KEY in str(result.error)


def test_a_context_runs_once(store):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("s", const(None))])])
    run = PipelineFactory(pipeline, store=store).prepare()
    run.run(timeout=10)
    with pytest.raises(RunStateError):
        run.run()


def test_run_id_taken_raises(store):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("s", const(None))])])
    factory = PipelineFactory(pipeline, store=store)
    factory.prepare(run_id="r1")
    with pytest.raises(RunExistsError):
        factory.prepare(run_id="r1")


def test_entry_starts_at_a_given_stage(store):
    pipeline = Pipeline(
        "p",
        [
            Stage("a", 1, steps=[Step("a", const({"a": 1}))]),
            Stage("b", 2, steps=[Step("b", const({"b": 1}))]),
        ],
    )
    factory = PipelineFactory(pipeline, store=store)
    assert factory.prepare(entry="b").run(timeout=10).state == {"b": 1}
    with pytest.raises(RoutingError, match="known stages: a, b"):
        factory.prepare(entry="zzz")


def test_handler_that_raises_never_fails_the_run(store, recorder):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("s", const({"x": 1}))])])
    run = PipelineFactory(pipeline, store=store).prepare()

    def bad_handler(event):
        raise RuntimeError("handler bug")

    run.on("*", bad_handler)
    run.on("stage:success", recorder)
    assert run.run(timeout=10).status == "succeeded"
    assert len(recorder.events) == 1


def test_unsubscribe(store, recorder):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("s", const({"x": 1}))])])
    run = PipelineFactory(pipeline, store=store).prepare()
    unsubscribe = run.on("*", recorder)
    unsubscribe()
    run.run(timeout=10)
    assert recorder.events == []


def test_start_returns_future_and_run_async(store):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("s", const({"x": 1}))])])
    factory = PipelineFactory(pipeline, store=store)
    assert factory.prepare().start().result(10).state == {"x": 1}

    async def main():
        return await factory.prepare().run_async()

    assert asyncio.run(main()).state == {"x": 1}


def test_list_runs_and_get_run(store):
    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("s", const({"x": 1}))])])
    factory = PipelineFactory(pipeline, store=store)
    done = factory.prepare().run(timeout=10)
    pending = factory.prepare()
    assert [r.run_id for r in store.list_runs(status="succeeded")] == [done.run_id]
    assert [r.run_id for r in store.list_runs(status="pending")] == [pending.run_id]
    assert len(store.list_runs(pipeline_id="p")) == 2
    assert store.list_runs(pipeline_id="other") == []
