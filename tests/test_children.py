"""Child pipelines (spec section 8): concurrent children of one run, their paths, failures,
pauses and resumes, nesting, artifacts and abort, on every store."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from stageline import (
    PIPELINE_DATA_KEY,
    CheckpointMismatch,
    ChildResult,
    PathNode,
    Pause,
    Pipeline,
    PipelineFactory,
    Registry,
    RunNotPaused,
    Stage,
    Step,
)
from stageline.actors.child import ChildRunActor
from stageline.actors.messages import Drain
from stageline.actors.stage_runner import StageRunner
from stageline.testing import EventRecorder, ManualClock, advance

pytestmark = pytest.mark.timeout(30)


class Calls:
    """Counts step executions by name, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def step(self, name: str, patch: dict[str, Any] | None = None) -> Any:
        def action(state: dict[str, Any], ctx: Any) -> Any:
            with self._lock:
                self.counts[name] += 1
            return patch

        return action


def one_step(pipeline_id: str, action: Any, stage_id: str = "work") -> Pipeline:
    return Pipeline(pipeline_id, [Stage(stage_id, 1, steps=[Step(stage_id, action)])])


def test_children_run_concurrently_and_their_patches_land_in_one_state(store: Any) -> None:
    both_started = threading.Barrier(2, timeout=10)  # breaks (fails) unless both run at once

    def meet(name: str) -> Any:
        def action(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
            both_started.wait()
            return {name: {"done": True, "saw_sibling": "billing" in state}}

        return action

    parent = Pipeline(
        "order",
        [
            Stage("fanout", 1, pipelines=[one_step("billing", meet("billing")),
                                          one_step("shipping", meet("shipping"))]),
            Stage("after", 2, steps=[Step("sum", lambda s, c: {"both": sorted(s)})]),
        ],
    )  # fmt: skip
    result = PipelineFactory(parent, store=store).prepare().run(timeout=20)
    assert result.status == "succeeded", result.error
    assert result.state["billing"] == {"done": True, "saw_sibling": False}
    assert result.state["shipping"] == {"done": True, "saw_sibling": False}
    assert result.state["both"] == ["billing", "shipping"]
    assert PIPELINE_DATA_KEY not in result.state
    assert PIPELINE_DATA_KEY not in store.get_run(result.run_id).state


def test_child_events_carry_their_full_path_in_one_seq_order(store: Any) -> None:
    def rate(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"tax": {"path": [[p.pipeline_id, p.stage_id] for p in ctx.path]}}

    grandchild = one_step("tax", rate, "rate")
    child = Pipeline(
        "billing",
        [
            Stage("charge", 1, steps=[Step("card", lambda s, c: {"charged": True})]),
            Stage("taxes", 2, pipelines=[grandchild]),
        ],
    )
    parent = Pipeline("order", [Stage("fanout", 1, pipelines=[child])])
    run = PipelineFactory(parent, store=store).prepare()
    recorder = EventRecorder(run)
    result = run.run(timeout=20)
    assert result.status == "succeeded", result.error

    root = PathNode("order", "fanout")
    billing = (root, PathNode("billing", "charge"))
    taxes = (root, PathNode("billing", "taxes"))
    rate = (root, PathNode("billing", "taxes"), PathNode("tax", "rate"))
    paths = [(e.name, e.path) for e in recorder.events if e.name.startswith("stage:")]
    assert paths == [
        ("stage:start", (root,)),
        ("stage:start", billing),
        ("stage:success", billing),
        ("stage:start", taxes),
        ("stage:start", rate),
        ("stage:success", rate),
        ("stage:success", taxes),
        ("stage:success", (root,)),
    ]
    assert result.state["tax"]["path"] == [list(node) for node in rate]
    seqs = [e.seq for e in recorder.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    names = [e.name for e in recorder.events]
    assert names[0] == "pipeline:start" and names[-1] == "pipeline:success"
    assert sum(name.startswith("pipeline:") for name in names) == 2  # children emit none
    journal = store.read_events(result.run_id)
    assert [e.seq for e in journal] == sorted(e.seq for e in journal)
    journaled = {(e.name, e.path) for e in journal}
    assert set(paths) <= journaled
    # a tailer reading after any seq it has seen never misses a stage event committed later
    for cut in range(len(journal)):
        later = store.read_events(result.run_id, after_seq=journal[cut].seq)
        assert later == journal[cut + 1 :]


def test_parent_router_gets_child_results(store: Any) -> None:
    seen: list[dict[str, Any]] = []

    def route(state: dict[str, Any], results: dict[str, Any]) -> None:
        seen.append(results)

    parent = Pipeline(
        "order",
        [Stage("fanout", 1, pipelines=[one_step("a", lambda s, c: {"a": 1}),
                                       one_step("b", lambda s, c: None)], router=route)],
    )  # fmt: skip
    run = PipelineFactory(parent, store=store).prepare()
    recorder = EventRecorder(run)
    assert run.run(timeout=20).status == "succeeded"
    assert seen == [{"a": ChildResult("succeeded"), "b": ChildResult("succeeded")}]
    success = next(e for e in recorder.of("stage:success") if e.stage_id == "fanout")
    assert success.results == {
        "a": {"status": "succeeded", "error": None},
        "b": {"status": "succeeded", "error": None},
    }


def failing_billing() -> Pipeline:
    def card(state: dict[str, Any], ctx: Any) -> None:
        raise ValueError("declined")

    return Pipeline(
        "billing",
        [
            Stage("prepare", 1, steps=[Step("amount", lambda s, c: {"amount": 10})]),
            Stage("charge", 2, label="Charge", steps=[Step("card", card)]),
        ],
    )


def test_failed_child_fails_the_parent_stage_naming_child_stage_and_step(store: Any) -> None:
    calls = Calls()
    parent = Pipeline(
        "order",
        [
            Stage("fanout", 1, label="Fanout",
                  pipelines=[failing_billing(), one_step("shipping", calls.step("pack", {"p": 1}))]),
            Stage("after", 2, steps=[Step("never", calls.step("after"))]),
        ],
    )  # fmt: skip
    run = PipelineFactory(parent, store=store).prepare()
    recorder = EventRecorder(run)
    result = run.run(timeout=20)
    assert result.status == "failed"
    message = str(result.error)
    assert message.startswith("1 child pipeline(s) failed in Fanout:fanout: billing: ")
    assert "1 step(s) failed in Charge:charge: card: ValueError('declined')" in message
    assert calls.counts == {"pack": 1}  # the sibling ran to its end; "after" never ran
    # the children's committed stages are kept in the failed run's state
    assert result.state == {"amount": 10, "p": 1}
    assert store.get_run(result.run_id).stage == "fanout"
    failures = [(e.stage_id, e.path[-1].pipeline_id) for e in recorder.of("stage:failure")]
    assert failures == [("charge", "billing"), ("fanout", "order")]
    assert recorder.of("pipeline:failure")[0].error is not None


def test_router_instruction_handles_a_failed_child(store: Any) -> None:
    def route(state: dict[str, Any], results: dict[str, Any]) -> str | None:
        if results["billing"].status == "failed":
            assert "declined" in str(results["billing"].error)
            return "compensate"
        return None

    parent = Pipeline(
        "order",
        [
            Stage("fanout", 1, pipelines=[failing_billing()], router=route),
            Stage("ship", 2, steps=[Step("ship", lambda s, c: {"shipped": True})]),
            Stage("compensate", 3, steps=[Step("undo", lambda s, c: {"refunded": True})]),
        ],
    )
    result = PipelineFactory(parent, store=store).prepare().run(timeout=20)
    assert result.status == "succeeded", result.error
    assert result.state == {"amount": 10, "refunded": True}


def pausing_parent(calls: Calls, sibling_gate: threading.Event | None = None) -> Pipeline:
    def pack(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if sibling_gate is not None:
            assert sibling_gate.wait(10)
        calls.step("pack")(state, ctx)
        return {"packed": True}

    billing = Pipeline(
        "billing",
        [
            Stage("charge", 1, steps=[Step("charge", calls.step("charge", {"charged": 1}))],
                  router=lambda s, r: Pause("confirm", timeout=60.0)),
            Stage("skipped", 2, steps=[Step("skipped", calls.step("skipped"))]),
            Stage("confirm", 3, steps=[Step("confirm", lambda s, c: {"confirmed": s["ok"]})]),
        ],
    )  # fmt: skip
    shipping = one_step("shipping", pack)
    return Pipeline(
        "order",
        [
            Stage("fanout", 1, pipelines=[billing, shipping]),
            Stage("done", 2, steps=[Step("done", calls.step("done", {"done": True}))]),
        ],
    )


def test_child_pause_waits_for_siblings_then_resume_continues_only_paused_children(
    store: Any,
) -> None:
    calls, gate = Calls(), threading.Event()
    with Registry(default_pause_timeout=300.0) as registry:
        factory = PipelineFactory(pausing_parent(calls, gate), store=store, registry=registry)
        run = factory.prepare()
        recorder = EventRecorder(run)
        future = run.start()
        recorder.wait_for("stage:paused", timeout=10)  # billing paused ...
        assert not future.done()  # ... but the run waits for shipping
        gate.set()
        result = future.result(timeout=10)
        assert result.status == "paused"
        checkpoint = result.checkpoint
        assert checkpoint is not None and checkpoint.resume_at == "fanout"
        assert checkpoint.children["order/fanout/billing"]["status"] == "paused"
        assert checkpoint.children["order/fanout/billing"]["stage"] == "confirm"
        assert checkpoint.children["order/fanout/shipping"]["status"] == "succeeded"
        paused = recorder.of("pipeline:paused")[0]
        assert paused.pause_timeout == 60.0

        resumed = factory.resume(run.run_id, patch={"ok": "yes"})
        assert resumed is run  # the registry's fast path
        result = resumed.run(timeout=20)
    assert result.status == "succeeded", result.error
    assert result.state == {"charged": 1, "packed": True, "ok": "yes", "confirmed": "yes",
                            "done": True}  # fmt: skip
    assert calls.counts == {"charge": 1, "pack": 1, "done": 1}
    assert PIPELINE_DATA_KEY not in store.load_run(run.run_id).state  # positions cleared


def test_child_pause_resumes_from_the_store_in_a_new_factory(store: Any) -> None:
    calls = Calls()
    first = PipelineFactory(pausing_parent(calls), store=store)
    result = first.prepare().run(timeout=20)
    assert result.status == "paused"
    again = PipelineFactory(pausing_parent(calls), store=store)  # the slow path
    resumed = again.resume(result.run_id, patch={"ok": 1})
    recorder = EventRecorder(resumed)
    final = resumed.run(timeout=20)
    assert final.status == "succeeded", final.error
    assert final.state["confirmed"] == 1
    assert calls.counts == {"charge": 1, "pack": 1, "done": 1}
    started = [(e.path[-1].pipeline_id, e.stage_id) for e in recorder.of("stage:start")]
    assert started == [("order", "fanout"), ("billing", "confirm"), ("order", "done")]
    with pytest.raises(RunNotPaused):
        again.resume(result.run_id)


def test_nested_child_pause_and_resume(store: Any) -> None:
    calls = Calls()
    tax = Pipeline(
        "tax",
        [
            Stage("ask", 1, steps=[Step("ask", calls.step("ask"))],
                  router=lambda s, r: Pause("apply")),
            Stage("apply", 2, steps=[Step("apply", lambda s, c: {"rate": s["rate_in"]})]),
        ],
    )  # fmt: skip
    billing = Pipeline(
        "billing",
        [
            Stage("pre", 1, steps=[Step("pre", calls.step("pre"))]),
            Stage("taxes", 2, pipelines=[tax, one_step("fees", calls.step("fees"))]),
            Stage("post", 3, steps=[Step("post", calls.step("post", {"posted": True}))]),
        ],
    )
    parent = Pipeline("order", [Stage("fanout", 1, pipelines=[billing])])
    factory = PipelineFactory(parent, store=store)
    result = factory.prepare().run(timeout=20)
    assert result.status == "paused", result.error
    assert result.checkpoint is not None
    children = result.checkpoint.children
    assert children["order/fanout/billing"]["status"] == "paused"
    assert children["order/fanout/billing"]["stage"] == "taxes"
    assert children["order/fanout/billing/taxes/tax"]["stage"] == "apply"
    assert children["order/fanout/billing/taxes/fees"]["status"] == "succeeded"
    final = factory.resume(result.run_id, patch={"rate_in": 0.2}).run(timeout=20)
    assert final.status == "succeeded", final.error
    assert final.state == {"rate_in": 0.2, "rate": 0.2, "posted": True}
    assert calls.counts == {"ask": 1, "pre": 1, "fees": 1, "post": 1}


def test_children_share_the_run_container_with_namespaced_keys(store: Any) -> None:
    def put(name: str) -> Any:
        def action(state: dict[str, Any], ctx: Any) -> None:
            ctx.artifacts.put("who", name)
            ctx.artifacts.root.put(f"from_{name}", True)

        return action

    def read(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {
            "mine": ctx.artifacts.get("who"),
            "root": sorted(ctx.artifacts.root.keys()),
        }

    parent = Pipeline(
        "order",
        [
            Stage("fanout", 1, pipelines=[one_step("a", put("a")), one_step("b", put("b"))]),
            Stage("read", 2, steps=[Step("read", read)]),
        ],
    )
    result = PipelineFactory(parent, store=store).prepare().run(timeout=20)
    assert result.status == "succeeded", result.error
    assert result.state == {"mine": None, "root": ["from_a", "from_b"]}


def test_child_artifacts_survive_a_pause_through_the_bundle(store: Any) -> None:
    def keep(state: dict[str, Any], ctx: Any) -> None:
        ctx.artifacts.put("token", b"\x00secret")

    def use(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"token": ctx.artifacts.get("token"), "keys": ctx.artifacts.keys()}

    child = Pipeline(
        "child",
        [
            Stage("keep", 1, steps=[Step("keep", keep)], router=lambda s, r: Pause("use")),
            Stage("use", 2, steps=[Step("use", use)]),
        ],
    )
    parent = Pipeline("order", [Stage("fanout", 1, pipelines=[child])])
    result = PipelineFactory(parent, store=store).prepare().run(timeout=20)
    assert result.status == "paused"
    final = PipelineFactory(parent, store=store).resume(result.run_id).run(timeout=20)
    assert final.status == "succeeded", final.error
    assert final.state == {"token": b"\x00secret", "keys": ["token"]}


def test_abort_reaches_every_child_promptly(store: Any) -> None:
    saw_abort = {"inner": threading.Event(), "other": threading.Event()}
    running = threading.Barrier(3, timeout=10)  # both steps and the test

    def stuck(name: str) -> Any:
        def action(state: dict[str, Any], ctx: Any) -> None:
            running.wait()
            if ctx.aborted.wait(20):
                saw_abort[name].set()

        return action

    inner = one_step("inner", stuck("inner"))
    child = Pipeline("child", [Stage("nest", 1, pipelines=[inner])])
    parent = Pipeline(
        "order",
        [Stage("fanout", 1, pipelines=[child, one_step("other", stuck("other"))]),
         Stage("never", 2, steps=[Step("never", lambda s, c: {"never": True})])],
    )  # fmt: skip
    run = PipelineFactory(parent, store=store).prepare()
    recorder = EventRecorder(run)
    future = run.start()
    running.wait()  # both steps really run (not only announced) before the abort
    run.abort("operator said so")
    result = future.result(timeout=5)
    assert result.status == "aborted"
    assert "operator said so" in str(result.error)
    for name, event in saw_abort.items():  # both steps, one nested deeper, were signalled
        assert event.wait(5), f"step {name} never saw ctx.aborted"
    info = store.get_run(run.run_id)
    assert info.status == "aborted" and "never" not in info.state
    assert [e.name for e in recorder.events].count("pipeline:failure") == 1


def test_loop_back_into_a_children_stage_runs_the_children_again(store: Any) -> None:
    calls = Calls()

    def route(state: dict[str, Any], results: dict[str, Any]) -> str | None:
        return "fanout" if calls.counts["child"] < 3 else None

    parent = Pipeline(
        "order", [Stage("fanout", 1, pipelines=[one_step("c", calls.step("child"))], router=route)]
    )
    result = PipelineFactory(parent, store=store).prepare().run(timeout=20)
    assert result.status == "succeeded", result.error
    assert calls.counts == {"child": 3}


def test_child_step_retries_and_stage_timeout_inside_a_child(store: Any) -> None:
    attempts = Counter[str]()

    def flaky(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        attempts["flaky"] += 1
        if ctx.attempt < 2:
            raise RuntimeError("transient")
        return {"flaky": ctx.attempt}

    child = Pipeline("child", [Stage("s", 1, steps=[Step("flaky", flaky, retries=2)])])
    parent = Pipeline("order", [Stage("fanout", 1, pipelines=[child])])
    run = PipelineFactory(parent, store=store).prepare()
    recorder = EventRecorder(run)
    result = run.run(timeout=20)
    assert result.status == "succeeded", result.error
    assert result.state == {"flaky": 2}
    retry = recorder.of("step:retry")[0]
    assert retry.path == (PathNode("order", "fanout"), PathNode("child", "s"))


def test_a_child_stage_that_fails_its_router_fails_the_parent(store: Any) -> None:
    def bad_router(state: dict[str, Any], results: dict[str, Any]) -> str:
        return "nowhere"

    child = Pipeline("child", [Stage("s", 1, steps=[Step("x", lambda s, c: {"x": 1})],
                                     router=bad_router)])  # fmt: skip
    parent = Pipeline("order", [Stage("fanout", 1, pipelines=[child])])
    result = PipelineFactory(parent, store=store).prepare().run(timeout=20)
    assert result.status == "failed"
    assert "child: router of stage 's' in pipeline 'child' named unknown jump target" in str(
        result.error
    )
    assert result.state == {}  # the failed child stage's patch is not committed


def test_registry_stop_lets_child_stages_commit_and_leaves_the_run_resumable(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, calls, drained = threading.Event(), Calls(), threading.Event()
    dispatch = ChildRunActor._dispatch

    def seen_drain(self: ChildRunActor, message: Any) -> Any:
        answer = dispatch(self, message)
        if isinstance(message, Drain):
            drained.set()
        return answer

    monkeypatch.setattr(ChildRunActor, "_dispatch", seen_drain)

    def slow(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        assert gate.wait(10)
        return {"first": True}

    child = Pipeline(
        "child",
        [
            Stage("s1", 1, steps=[Step("slow", slow)]),
            Stage("s2", 2, steps=[Step("second", calls.step("second", {"second": True}))]),
        ],
    )
    parent = Pipeline("order", [Stage("fanout", 1, pipelines=[child])])
    registry = Registry()
    run = PipelineFactory(parent, store=store, registry=registry).prepare()
    recorder = EventRecorder(run)
    future = run.start()
    recorder.wait_for("step:start", timeout=10)
    stopper = threading.Thread(target=registry.stop, kwargs={"timeout": 10})
    stopper.start()
    assert drained.wait(10)  # the child has the drain before its step ends
    gate.set()
    stopper.join(15)
    assert not stopper.is_alive()
    assert future.result(timeout=5).status == "running"
    record = store.load_run(run.run_id)
    assert record.status == "running" and record.stage == "fanout"
    assert store.get_run(run.run_id).state == {"first": True}
    position = record.state[PIPELINE_DATA_KEY]["children"]["order/fanout/child"]
    assert position == {"status": "running", "stage": "s2", "stage_runs": 1}
    assert calls.counts == {}  # stopped between the child's stages


def test_parent_stage_timeout_stops_its_children(store: Any) -> None:
    clock = ManualClock()
    started, released = threading.Event(), threading.Event()

    def stuck(state: dict[str, Any], ctx: Any) -> None:
        started.set()
        ctx.aborted.wait(20)
        released.set()

    parent = Pipeline(
        "order",
        [Stage("fanout", 1, timeout=5.0, pipelines=[one_step("slow", stuck)])],
    )
    run = PipelineFactory(parent, store=store, clock=clock).prepare()
    future = run.start()
    assert started.wait(10)
    advance(clock, 5.0)
    result = future.result(timeout=10)
    assert result.status == "failed"
    assert "exceeded its timeout of 5.0s" in str(result.error)
    assert released.wait(5)  # the child's step was signalled


def test_a_runtime_bug_in_a_child_fails_the_parent_stage(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    result_key = StageRunner.result_key

    def broken(self: StageRunner, run: Any, slot: Any) -> str:
        if not self.place.is_root:  # a bug in the child's runner only
            raise RuntimeError("bug in the runtime")
        return result_key(self, run, slot)

    monkeypatch.setattr(StageRunner, "result_key", broken)
    parent = Pipeline("order", [Stage("fanout", 1, pipelines=[one_step("c", lambda s, c: None)])])
    result = PipelineFactory(parent, store=store).prepare().run(timeout=20)
    assert result.status == "failed"
    assert "stageline runtime error in child pipeline 'order/fanout/c'" in str(result.error)
    assert store.get_run(result.run_id).status == "failed"


def test_retry_of_a_failed_run_keeps_a_paused_child_paused(store: Any) -> None:
    """Only a resume releases a paused child; a retry re-pauses the stage around it."""
    calls, approval_paused, failures = Calls(), threading.Event(), Counter[str]()

    def ship(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        assert approval_paused.wait(10)  # fail only once the sibling paused
        failures["ship"] += 1
        if failures["ship"] == 1:
            raise ValueError("transient")
        return {"shipped": True}

    approval = Pipeline(
        "approval",
        [
            Stage("ask", 1, steps=[Step("ask", calls.step("ask"))],
                  router=lambda s, r: Pause("apply")),
            Stage("apply", 2, steps=[Step("apply", calls.step("apply", {"approved": True}))]),
        ],
    )  # fmt: skip
    shipping = Pipeline("shipping", [Stage("ship", 1, steps=[Step("ship", ship)])])
    parent = Pipeline("order", [Stage("fanout", 1, pipelines=[approval, shipping])])
    with Registry() as registry:
        factory = PipelineFactory(parent, store=store, registry=registry)
        run = factory.prepare()
        run.on("stage:paused", lambda e: approval_paused.set())
        first = run.run(timeout=20)
        assert first.status == "failed" and "transient" in str(first.error)
        again = registry.retry(first.run_id, factory).wait(timeout=20)
        assert again.status == "paused", again.error  # not carried past the pause
        assert again.state == {"shipped": True}
        assert calls.counts == {"ask": 1}
        final = factory.resume(first.run_id).run(timeout=20)
    assert final.status == "succeeded", final.error
    assert final.state == {"shipped": True, "approved": True}
    assert calls.counts == {"ask": 1, "apply": 1}


def test_a_stale_grandchild_cannot_commit_after_its_parent_stage_stopped(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C's stage S times out while grandchild G finishes a stage; the root loops back
    into the fanout. G's late commit must be refused: it would skip G's stage in the
    next iteration and commit a patch of a stage that failed."""
    clock = ManualClock()
    iteration = Counter[str]()
    ran: list[tuple[str, int]] = []
    g1_started, g1_release, g_busy, g_finish = (threading.Event() for _ in range(4))

    def g1(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        ran.append(("g1", iteration["n"]))
        if iteration["n"] == 1:
            g1_started.set()
            assert g1_release.wait(10)  # ignores ctx.aborted, like a stuck call
        return {"g1_iter": iteration["n"]}

    def pre(state: dict[str, Any], ctx: Any) -> None:
        iteration["n"] += 1

    on_step_done = StageRunner._on_step_done

    def held(self: StageRunner, done: Any) -> None:
        if self.place.key.endswith("/G") and not g_busy.is_set():
            g_busy.set()  # G holds its step's completion until S has timed out
            assert g_finish.wait(10)
        on_step_done(self, done)

    monkeypatch.setattr(StageRunner, "_on_step_done", held)
    grandchild = Pipeline(
        "G",
        [
            Stage("g1", 1, steps=[Step("g1", g1)]),
            Stage("g2", 2, steps=[Step("g2", lambda s, c: ran.append(("g2", iteration["n"])))]),
        ],
    )
    child = Pipeline(
        "C",
        [Stage("pre", 1, steps=[Step("pre", pre)]), Stage("S", 2, timeout=5.0, pipelines=[grandchild])],
    )  # fmt: skip
    loop = Pipeline(
        "order",
        [Stage("fanout", 1, pipelines=[child],
               router=lambda s, r: "fanout" if r["C"].status == "failed" else None)],
    )  # fmt: skip
    run = PipelineFactory(loop, store=store, clock=clock).prepare()
    recorder = EventRecorder(run)
    future = run.start()
    assert g1_started.wait(10)
    g1_release.set()
    assert g_busy.wait(10)  # G is handling its step's completion ...
    advance(clock, 5.0)  # ... when C's stage S times out
    recorder.wait_for("stage:failure", timeout=10, stage_id="S")
    g_finish.set()  # now G asks the root to commit g1 of the failed iteration
    result = future.result(timeout=20)
    assert result.status == "succeeded", result.error
    assert result.state == {"g1_iter": 2}
    assert ran == [("g1", 1), ("g1", 2), ("g2", 2)]


def test_resume_refuses_child_positions_the_definition_does_not_have(store: Any) -> None:
    def billing(confirm_stage: str) -> Pipeline:
        return Pipeline(
            "billing",
            [
                Stage("charge", 1, steps=[Step("c", lambda s, c: None)],
                      router=lambda s, r: Pause(confirm_stage)),
                Stage(confirm_stage, 2, steps=[Step("x", lambda s, c: {"done": True})]),
            ],
        )  # fmt: skip

    old = Pipeline("order", [Stage("fanout", 1, pipelines=[billing("confirm")])])
    new = Pipeline("order", [Stage("fanout", 1, pipelines=[billing("approve")])])
    paused = PipelineFactory(old, store=store).prepare().run(timeout=20)
    assert paused.status == "paused"
    with pytest.raises(CheckpointMismatch, match="'order/fanout/billing' stands at stage 'confirm'"):
        PipelineFactory(new, store=store).resume(paused.run_id)
    info = store.get_run(paused.run_id)
    assert info.status == "paused" and info.checkpoint is not None  # nothing was claimed
    final = PipelineFactory(old, store=store).resume(paused.run_id).run(timeout=20)
    assert final.status == "succeeded" and final.state == {"done": True}


def test_a_child_stuck_in_a_loop_fails_the_stage_with_a_journal_that_pairs_up(
    store: Any,
) -> None:
    """A child over its own max_stage_runs fails the parent stage. The stage it could not
    start leaves no stage:failure behind (was: a stage:failure with no stage:start)."""
    looping = Pipeline(
        "looping",
        [Stage("spin", 1, steps=[Step("n", lambda s, c: {"n": 1})], router=lambda s, r: "spin")],
        max_stage_runs=3,
    )
    parent = Pipeline("parent", [Stage("fan", 1, pipelines=[looping])])
    result = PipelineFactory(parent, store=store).prepare().run(timeout=10)
    assert result.status == "failed"
    assert "max_stage_runs=3" in str(result.error)
    journal = store.read_events(result.run_id)
    child = [e for e in journal if e.path[-1].pipeline_id == "looping"]
    assert {e.pipeline_id for e in child} == {"looping"}  # read back from every store
    starts = [e for e in child if e.name == "stage:start"]
    ends = [e for e in child if e.name in ("stage:success", "stage:failure", "stage:paused")]
    assert len(starts) == len(ends) == 3
    assert [e.name for e in ends] == ["stage:success"] * 3
