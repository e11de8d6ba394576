"""Pause, the registry's live window, export, and the fast and slow resume paths."""

from __future__ import annotations

import threading

import pytest

from stageline import (
    ArtifactError,
    CheckpointCorrupt,
    CheckpointMismatch,
    CheckpointNotFound,
    ManualClock,
    Pause,
    Pipeline,
    PipelineFactory,
    Registry,
    RunExpired,
    RunNotPaused,
    Stage,
    Step,
    read_checkpoint,
)
from stageline.actors.carriers import IDLE_NAME, shared_carriers
from stageline.core.checkpoint import decode_bundle
from stageline.testing import EventRecorder, advance, wait_for_stats

pytestmark = pytest.mark.timeout(30)


class Counter:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def step(self, name, patch=None):
        def action(state, ctx):
            with self.lock:
                self.calls[name] = self.calls.get(name, 0) + 1
            return patch

        return action


def checkout(counter, pause=None):
    pause = pause or Pause("ship", timeout=30.0)

    def check(state, ctx):
        counter.step("check")(state, ctx)
        ctx.artifacts.put("note", {"checked": True})
        return {"order": {"valid": True}}

    def label(state, ctx):
        counter.step("label")(state, ctx)
        return {"note": ctx.artifacts.get("note"), "approved": state.get("approved")}

    return Pipeline(
        "checkout",
        [
            Stage("validate", 1, steps=[Step("check", check)], router=lambda s, r: pause),
            Stage("approve", 2, steps=[Step("ask", counter.step("ask", {"asked": True}))]),
            Stage("ship", 3, steps=[Step("label", label)]),
        ],
    )


class CountingStore:
    """Counts reads, to prove the fast path reads nothing."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.reads = 0

    def load_run(self, run_id):
        self.reads += 1
        return self.inner.load_run(run_id)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_pause_commits_with_checkpoint_and_events(store):
    counter = Counter()
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(checkout(counter), store=store, registry=registry)
        run = factory.prepare()
        events = EventRecorder(run)
        result = run.run(timeout=10)
    assert result.status == "paused"
    cp = result.checkpoint
    assert (cp.run_id, cp.pipeline_id, cp.pipeline_version) == (run.run_id, "checkout", 1)
    assert (cp.resume_at, cp.paused_at_stage_id, cp.paused_at_stage_label) == (
        "ship",
        "validate",
        "validate",
    )
    assert cp.paused_on.endswith("+00:00")
    names = events.names()
    assert names[-2:] == ["stage:paused", "pipeline:paused"]
    assert "stage:success" not in names
    assert events.of("pipeline:paused")[0].pause_timeout == 30.0
    assert events.of("stage:paused")[0].resume_at == "ship"
    info = store.get_run(run.run_id)
    assert info.status == "paused" and info.stage == "ship"
    assert info.state == {"order": {"valid": True}}
    assert info.checkpoint.resume_at == "ship"
    journal = [e.name for e in store.read_events(run.run_id)]
    assert journal[-3:] == ["stage:start", "stage:paused", "pipeline:paused"]


def test_fast_path_returns_the_same_context_without_reading_the_store(store):
    counter = Counter()
    counting = CountingStore(store)
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(checkout(counter), store=counting, registry=registry)
        run = factory.prepare()
        first = run.run(timeout=10)
        reads = counting.reads
        again = factory.resume(first.run_id, patch={"approved": True})
        assert again is run
        assert counting.reads == reads
        result = again.run(timeout=10)
    assert result.status == "succeeded"
    assert result.state["approved"] is True
    assert result.state["note"] == {"checked": True}  # artifacts kept in memory
    assert counter.calls == {"check": 1, "label": 1}  # approve was skipped by resume_at
    assert store.get_run(run.run_id).checkpoint is None  # cleared when the run ended


def _gate_then_slow() -> tuple[Pipeline, threading.Event, threading.Event]:
    """Stage "a" pauses for "b"; b's step sets `entered`, then waits for `release`."""
    entered, release = threading.Event(), threading.Event()

    def slow(state, ctx):
        entered.set()
        assert release.wait(10)
        return {"slow": True}

    pipeline = Pipeline(
        "gate",
        [
            Stage("a", 1, steps=[Step("a", lambda s, c: {"a": 1})], router=lambda s, r: Pause("b")),
            Stage("b", 2, steps=[Step("slow", slow)]),
        ],
    )
    return pipeline, entered, release


def test_a_run_resumed_on_the_fast_path_outlives_its_old_pause_window(store):
    """The fast path cancels the pause window's timer itself (no registry message): a
    resumed run still busy when the window would have ended is neither exported nor let
    go, and the registry counts no open window for it."""
    clock = ManualClock()
    pipeline, entered, release = _gate_then_slow()
    with Registry(clock=clock, default_pause_timeout=60.0) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        paused = factory.prepare().run(timeout=10)
        assert registry.stats()["pause_windows"] == 1
        resumed = factory.resume(paused.run_id)
        future = resumed.start()
        assert entered.wait(10)
        assert registry.stats()["pause_windows"] == 0  # its timer is cancelled already
        advance(clock, 120.0, registry)
        stats = registry.stats()
        assert stats["exported"] == 0 and stats["pause_windows"] == 0
        assert registry.live_runs() == [resumed]
        release.set()
        assert future.result(10).state == {"a": 1, "slow": True}
        wait_for_stats(registry, ended=1, live=0)


def test_a_stale_forget_does_not_untrack_a_run_resumed_on_the_fast_path(store):
    """Was: a `_Forget` the registry handled after a fast-path resume dropped the running
    run from the registry (no lease renewal, no drain at stop); the resume no longer sends
    a message that would have tracked it again."""
    from stageline.actors.registry_messages import Counted

    pipeline, entered, release = _gate_then_slow()
    with Registry() as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        paused = factory.prepare().run(timeout=10)
        live = registry.supervisor.lookup(paused.run_id)
        with registry.supervisor.changed:  # the registry's thread stops after its next message
            registry._actor.tell(Counted("paused", 0))
            registry.supervisor.forget(live)  # found stale by some resume: handled only later
            resumed = factory.resume(paused.run_id)
            assert resumed is live.context
            future = resumed.start()
        assert entered.wait(10)
        assert registry.live_runs() == [resumed]  # handled the _Forget: still tracked
        release.set()
        assert future.result(10).state == {"a": 1, "slow": True}
        wait_for_stats(registry, ended=1, live=0)


def test_a_window_that_fired_just_before_a_fast_resume_does_not_export_the_next_pause(store):
    """The old window's timer fires, then a fast-path resume cancels it too late, then the
    run pauses again, all before the registry handles the expiry: that expiry is stale."""
    from stageline.actors.registry_messages import Counted

    clock = ManualClock()
    pipeline = Pipeline(
        "twice",
        [
            Stage("a", 1, steps=[Step("a", lambda s, c: {"a": 1})], router=lambda s, r: Pause("b")),
            Stage("b", 2, steps=[Step("b", lambda s, c: {"b": 2})], router=lambda s, r: Pause("c")),
            Stage("c", 3, steps=[Step("c", lambda s, c: {"c": 3})]),
        ],
    )
    with Registry(clock=clock, default_pause_timeout=60.0) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        paused = factory.prepare().run(timeout=10)
        with registry.supervisor.changed:  # the registry's thread stops after its next message
            registry._actor.tell(Counted("paused", 0))
            clock.advance(60.0)
            assert registry.supervisor.timers.wait_idle()  # the expiry is in the registry's mailbox
            resumed = factory.resume(paused.run_id)
            paused_again = threading.Event()
            resumed.on("pipeline:paused", lambda event: paused_again.set())
            again = resumed.start()
            assert paused_again.wait(10)  # committed paused; its registry ask waits
        assert again.result(10).status == "paused"
        stats = registry.stats()
        assert stats["exported"] == 0 and stats["paused_live"] == 1
        assert factory.resume(paused.run_id).run(timeout=10).state == {"a": 1, "b": 2, "c": 3}


def test_window_expiry_exports_the_bundle_and_slow_path_restores_it(store):
    counter = Counter()
    clock = ManualClock()
    with Registry(clock=clock, default_pause_timeout=60.0) as registry:
        factory = PipelineFactory(checkout(counter, Pause("ship")), store=store, registry=registry)
        run = factory.prepare()
        result = run.run(timeout=10)
        assert result.checkpoint.container_bundle is None
        assert registry.stats()["paused_live"] == 1
        advance(clock, 59.9, registry)
        assert registry.stats()["exported"] == 0
        advance(clock, 0.1, registry)
        assert registry.stats()["exported"] == 1
        assert registry.live_runs() == []
        cp = read_checkpoint(store, "checkout", run.run_id)
        artifacts = decode_bundle(cp.container_bundle, run.run_id)
        assert artifacts["checkout"] == {"note": {"checked": True}}
        resumed = factory.resume(run.run_id)
        assert resumed is not run
        final = resumed.run(timeout=10)
    assert final.status == "succeeded"
    assert final.state["note"] == {"checked": True}


def test_zero_timeout_exports_at_once(store):
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(
            checkout(Counter(), Pause("ship", timeout=0)), store=store, registry=registry
        )
        result = factory.prepare().run(timeout=10)
        assert registry.stats()["exported"] == 1
    cp = read_checkpoint(store, "checkout", result.run_id)
    assert cp.container_bundle is not None


def test_persist_writes_the_bundle_with_the_pause_commit(store):
    with Registry(clock=ManualClock()) as registry:
        factory = PipelineFactory(
            checkout(Counter(), Pause("ship", timeout=999, persist=True)),
            store=store,
            registry=registry,
        )
        result = factory.prepare().run(timeout=10)
        cp = read_checkpoint(store, "checkout", result.run_id)
        assert decode_bundle(cp.container_bundle, result.run_id)["checkout"]["note"] == {
            "checked": True
        }


def test_slow_path_from_another_factory_without_registry(store):
    counter = Counter()
    first = PipelineFactory(checkout(counter), store=store)
    paused = first.prepare().run(timeout=10)
    other = PipelineFactory(checkout(counter), store=store)
    result = other.resume(paused.run_id, patch={"approved": "yes"}).run(timeout=10)
    assert result.status == "succeeded"
    assert result.state["approved"] == "yes"
    assert result.state["note"] == {"checked": True}  # no registry: persisted at pause
    with pytest.raises(RunNotPaused):
        other.resume(paused.run_id)


def test_racing_resumes_exactly_one_wins(store):
    counter = Counter()
    paused = PipelineFactory(checkout(counter), store=store).prepare().run(timeout=10)
    barrier = threading.Barrier(8)
    outcomes = []
    lock = threading.Lock()

    def contender():
        factory = PipelineFactory(checkout(counter), store=store)
        barrier.wait()
        try:
            ctx = factory.resume(paused.run_id, patch={"winner": threading.get_ident()})
        except RunNotPaused:
            with lock:
                outcomes.append("lost")
            return
        ctx.run(timeout=10)
        with lock:
            outcomes.append("won")

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert counter.calls["label"] == 1  # the resumed stage ran once


def test_resume_errors(store):
    counter = Counter()
    factory = PipelineFactory(checkout(counter), store=store)
    with pytest.raises(CheckpointNotFound, match="no run"):
        factory.resume("missing")
    done = PipelineFactory(
        Pipeline("other", [Stage("s", 1, steps=[Step("a", lambda s, c: None)])]), store=store
    ).prepare()
    done.run(timeout=10)
    with pytest.raises(CheckpointMismatch, match="'other'"):
        factory.resume(done.run_id)
    paused = factory.prepare().run(timeout=10)
    v2 = Pipeline("checkout", checkout(counter).stages, version=2)
    with pytest.raises(CheckpointMismatch, match="add_migration"):
        PipelineFactory(v2, store=store).resume(paused.run_id)
    migrating = PipelineFactory(v2, store=store)
    migrating.add_migration(1, lambda state: {**state, "migrated": True})
    result = migrating.resume(paused.run_id).run(timeout=10)
    assert result.state["migrated"] is True
    with pytest.raises(RunNotPaused):
        factory.resume(paused.run_id)


def test_resume_at_missing_from_this_version(store):
    paused = PipelineFactory(checkout(Counter()), store=store).prepare().run(timeout=10)
    shorter = Pipeline("checkout", [Stage("validate", 1, steps=[Step("x", lambda s, c: None)])])
    with pytest.raises(CheckpointMismatch, match="'ship'"):
        PipelineFactory(shorter, store=store).resume(paused.run_id)
    assert store.get_run(paused.run_id).status == "paused"  # nothing claimed


@pytest.mark.parametrize("garbage", [b"", b"\xff\x00garbage", b"\xa1aa\xd9\x01\x02\x80"])
def test_corrupt_checkpoint(store, garbage):
    factory = PipelineFactory(checkout(Counter()), store=store)
    paused = factory.prepare().run(timeout=10)
    store.set_checkpoint(paused.run_id, garbage)
    with pytest.raises(CheckpointCorrupt):
        factory.resume(paused.run_id)
    info = store.get_run(paused.run_id)
    assert info.status == "paused" and info.state == {"order": {"valid": True}}


def test_checkpoint_ttl_expires_paused_runs(store):
    clock = ManualClock()
    with Registry(clock=clock, checkpoint_ttl=100.0, default_pause_timeout=10.0) as registry:
        factory = PipelineFactory(
            checkout(Counter(), Pause("ship")), store=store, registry=registry
        )
        paused = factory.prepare().run(timeout=10)
        advance(clock, 100.0, registry)
        assert registry.stats()["expired"] == 1
        info = store.get_run(paused.run_id)
        assert info.status == "expired" and info.checkpoint is None
        with pytest.raises(RunExpired):
            factory.resume(paused.run_id)


def test_paused_runs_hold_no_threads(store):
    clock = ManualClock()
    with Registry(clock=clock) as registry:
        factory = PipelineFactory(
            checkout(Counter(), Pause("ship", timeout=999)), store=store, registry=registry
        )
        factory.prepare().run(timeout=10)  # warm the pools
        before = threading.active_count()
        for _ in range(100):
            factory.prepare().run(timeout=10)
        assert registry.stats()["paused_live"] == 101
        assert threading.active_count() <= before + 2  # actor threads ended at pause


def test_artifacts_api(store):
    seen = {}

    def writer(state, ctx):
        ctx.artifacts.put("k", [1, 2])
        ctx.artifacts.root.put("shared", "run-wide")
        ctx.artifacts.put("gone", 1)
        ctx.artifacts.delete("gone")
        value = ctx.artifacts.get("k")
        value.append(3)  # a copy: the stored value is unchanged
        seen["keys"] = ctx.artifacts.keys()
        seen["missing"] = ctx.artifacts.get("nope", "default")
        with pytest.raises(ArtifactError, match="set"):
            ctx.artifacts.put("bad", {1, 2})
        return None

    def reader(state, ctx):
        return {"k": ctx.artifacts.get("k"), "shared": ctx.artifacts.root.get("shared")}

    pipeline = Pipeline(
        "arts",
        [Stage("w", 1, steps=[Step("w", writer)]), Stage("r", 2, steps=[Step("r", reader)])],
    )
    result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    assert result.status == "succeeded", result.error
    assert result.state == {"k": [1, 2], "shared": "run-wide"}
    assert seen == {"keys": ["k"], "missing": "default"}


def test_registry_stop_exports_live_paused_runs(store):
    registry = Registry(clock=ManualClock())
    factory = PipelineFactory(
        checkout(Counter(), Pause("ship", timeout=999)), store=store, registry=registry
    )
    paused = factory.prepare().run(timeout=10)
    registry.stop()
    cp = read_checkpoint(store, "checkout", paused.run_id)
    assert cp.container_bundle is not None
    result = PipelineFactory(checkout(Counter()), store=store).resume(paused.run_id).run(10)
    assert result.state["note"] == {"checked": True}


def _join_actor_threads():
    """Wait until no actor loop runs and no idle carrier thread waits for one."""
    names = ("RunActor", "ContainerActor", "RegistryActor", IDLE_NAME)
    for _ in range(200):
        shared_carriers().retire_idle(timeout=10)
        busy = [t for t in threading.enumerate() if t.name.startswith(names)]
        if not busy:
            return
        busy[0].join(0.05)  # a loop still ending: its carrier parks, then is retired
    raise AssertionError(f"actor threads still alive: {busy}")


def test_registry_stop_lets_running_stages_commit_and_leaves_no_thread(store):
    warm = PipelineFactory(checkout(Counter(), Pause("ship", timeout=999)), store=store)
    warm.prepare().run(timeout=10)  # the shared step pool exists from here on
    _join_actor_threads()
    before = threading.active_count()

    release = threading.Event()
    started = threading.Event()

    def slow(state, ctx):
        started.set()
        release.wait(10)
        return {"slow": "done"}

    long_run = Pipeline(
        "long",
        [
            Stage("one", 1, steps=[Step("slow", slow)]),
            Stage("two", 2, steps=[Step("never", lambda s, c: {"two": True})]),
        ],
    )
    registry = Registry(clock=ManualClock())
    paused = (
        PipelineFactory(
            checkout(Counter(), Pause("ship", timeout=999)), store=store, registry=registry
        )
        .prepare()
        .run(timeout=10)
    )
    running = PipelineFactory(long_run, store=store, registry=registry).prepare()
    future = running.start()
    assert started.wait(10)
    drained = threading.Event()
    drain = running._run.drain  # private: the run's handle

    def drain_then_signal():  # release the step only once stop() has asked the run to drain
        answer = drain()
        drained.set()
        return answer

    running._run.drain = drain_then_signal
    stopper = threading.Thread(target=registry.stop, kwargs={"timeout": 10})
    stopper.start()
    assert drained.wait(10)
    release.set()
    stopper.join(20)
    result = future.result(10)
    assert result.status == "running" and result.state == {"slow": "done"}
    info = store.get_run(running.run_id)
    assert info.status == "running" and info.stage == "two" and info.state == {"slow": "done"}
    assert read_checkpoint(store, "checkout", paused.run_id).container_bundle is not None
    _join_actor_threads()
    assert threading.active_count() <= before  # stop() also retires the idle step threads


def test_a_stale_live_copy_never_overwrites_a_newer_checkpoint(store):
    """A holds a run live; B resumes it and it pauses again; A's expiry must not win."""
    runs = []

    def step(name):
        def action(state, ctx):
            runs.append(name)
            return {name: True}

        return action

    p = Pipeline(
        "p",
        [
            Stage("a", 1, steps=[Step("a", step("a"))], router=lambda s, r: Pause("b")),
            Stage("b", 2, steps=[Step("b", step("b"))], router=lambda s, r: Pause("c")),
            Stage("c", 3, steps=[Step("c", step("c"))]),
        ],
    )
    clock = ManualClock()
    with Registry(clock=clock, default_pause_timeout=60) as registry:
        holder = PipelineFactory(p, store=store, registry=registry)
        run_id = holder.prepare().run(10).run_id  # live in this registry, paused at "b"
        PipelineFactory(p, store=store).resume(run_id).run(10)  # elsewhere: paused at "c"
        advance(clock, 61, registry)  # the live window ends: the stale copy must not export
        assert read_checkpoint(store, "p", run_id).resume_at == "c"
        # the holder's resume falls back to the store, which knows better
        final = holder.resume(run_id).run(10)
    assert final.status == "succeeded"
    assert runs == ["a", "b", "c"]


def test_stale_live_copy_resume_falls_back_to_the_store(store):
    p = Pipeline(
        "p",
        [
            Stage("a", 1, steps=[Step("a", lambda s, c: {"a": 1})], router=lambda s, r: Pause("b")),
            Stage("b", 2, steps=[Step("b", lambda s, c: {"b": 1})], router=lambda s, r: Pause("c")),
            Stage("c", 3, steps=[Step("c", lambda s, c: {"c": 1})]),
        ],
    )
    with Registry(clock=ManualClock(), default_pause_timeout=999) as registry:
        holder = PipelineFactory(p, store=store, registry=registry)
        live = holder.prepare()
        run_id = live.run(10).run_id
        PipelineFactory(p, store=store).resume(run_id).run(10)  # now paused at "c"
        resumed = holder.resume(run_id)
        assert resumed is not live  # the stale copy was dropped
        assert resumed.run(10).state == {"a": 1, "b": 1, "c": 1}
