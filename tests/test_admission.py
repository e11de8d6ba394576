"""Admission control in one process (SPEC section 20), on every store.

Runs of a pipeline with `Limit`s take a slot of each before they run; the others are
committed "queued" and admitted, highest priority then oldest, as slots free. Steps here
record when they run; a threading.Event holds runs inside their step where a test needs
slots to stay taken.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from stageline import (
    DefinitionError,
    Limit,
    Pause,
    Pipeline,
    PipelineFactory,
    Registry,
    RunNotPaused,
    Sleep,
    Stage,
    StagelineError,
    Step,
)
from stageline.core.admission import AdmissionError
from stageline.testing import ManualClock, advance, wait_for_stats, wait_for_status

pytestmark = pytest.mark.timeout(120)


class Tracker:
    """Which runs are inside their step, the most at once, and the order they entered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.entered: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def step(self, group: str = "all") -> Any:
        def action(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
            name = state.get("customer", group)
            with self.lock:
                self.inside[name] = self.inside.get(name, 0) + 1
                self.peak[name] = max(self.peak.get(name, 0), self.inside[name])
                self.entered.append(ctx.run_id)
            self.gate.wait(30)
            with self.lock:
                self.inside[name] -= 1
            return {"done": True}

        return action


def limited(tracker: Tracker, *limits: Limit, pipeline_id: str = "api") -> Pipeline:
    return Pipeline(pipeline_id, [Stage("call", 1, steps=[Step("call", tracker.step())])],
                    limits=limits)  # fmt: skip


@pytest.fixture
def registry():
    with Registry() as registry:
        yield registry


def test_never_more_than_max_running_and_every_run_finishes(store, registry):
    tracker = Tracker()
    factory = PipelineFactory(limited(tracker, Limit("api", 5)), store=store, registry=registry)
    futures = [factory.prepare().start() for _ in range(60)]
    results = [future.result(60) for future in futures]
    assert {result.status for result in results} == {"succeeded"}
    assert tracker.peak["all"] <= 5
    assert len(tracker.entered) == len(set(tracker.entered)) == 60
    assert registry.stats()["queued"] == 0


def test_queued_runs_are_admitted_by_priority_then_age(store, registry):
    tracker = Tracker()
    tracker.gate.clear()  # the first run holds the only slot until every run is queued
    factory = PipelineFactory(limited(tracker, Limit("api", 1)), store=store, registry=registry)
    first = factory.prepare()
    futures = [first.start()]
    wait_for_status(store, first.run_id, "running")
    low = [factory.prepare(priority=0) for _ in range(4)]
    high = [factory.prepare(priority=5) for _ in range(3)]
    futures += [run.start() for run in (*low, *high)]
    wait_for_stats(registry, queued=7)
    assert {store.get_run(r.run_id).status for r in (*low, *high)} == {"queued"}
    assert store.get_run(high[0].run_id).priority == 5
    tracker.gate.set()
    assert {f.result(60).status for f in futures} == {"succeeded"}
    expected = [first.run_id] + [r.run_id for r in high] + [r.run_id for r in low]
    assert tracker.entered == expected


def test_each_key_has_its_own_slots_and_a_busy_key_does_not_starve_others(store, registry):
    tracker = Tracker()
    tracker.gate.clear()
    limit = Limit("api", 2, key=lambda state: state["customer"])
    factory = PipelineFactory(limited(tracker, limit), store=store, registry=registry)
    busy = [factory.prepare(state={"customer": "big"}) for _ in range(20)]
    futures = [run.start() for run in busy]
    wait_for_stats(registry, queued=18)
    other = factory.prepare(state={"customer": "small"})
    futures.append(other.start())
    wait_for_status(store, other.run_id, "running")  # not behind big's 18 queued runs
    usage = {row["key"]: row for row in store.limit_usage(time.time())}
    assert (usage["big"]["running"], usage["big"]["queued"]) == (2, 18)
    assert (usage["small"]["running"], usage["small"]["queued"]) == (1, 0)
    tracker.gate.set()
    assert {f.result(60).status for f in futures} == {"succeeded"}
    assert tracker.peak["big"] <= 2 and tracker.peak["small"] == 1


def test_a_rate_allows_n_starts_per_sliding_window(store):
    clock = ManualClock()
    tracker = Tracker()
    limit = Limit("api", 100, rate=(3, 10.0))
    with Registry(clock=clock) as registry:
        factory = PipelineFactory(limited(tracker, limit), store=store, registry=registry)
        futures = [factory.prepare().start() for _ in range(7)]
        wait_for_stats(registry, queued=4)
        advance(clock, 9.9, registry)
        assert registry.stats()["queued"] == 4  # the window has not slid yet
        advance(clock, 0.2, registry)  # the first three starts leave the window
        wait_for_stats(registry, queued=1)
        advance(clock, 10.0, registry)
        wait_for_stats(registry, queued=0)
        assert {f.result(30).status for f in futures} == {"succeeded"}
    starts = sorted(e.ts for run in store.list_runs() for e in store.read_events(run.run_id)
                    if e.name == "pipeline:start")  # fmt: skip
    for i, at in enumerate(starts):  # no sliding 10 s window holds more than 3 starts
        assert len([t for t in starts[i:] if t < at + 10.0]) <= 3


def test_a_paused_run_gives_its_slot_back_and_queues_on_resume(store, registry):
    tracker = Tracker()
    pipeline = Pipeline("api", [
        Stage("ask", 1, router=lambda state, results: None if state.get("ok") else Pause("ask")),
        Stage("call", 2, steps=[Step("call", tracker.step())]),
    ], limits=[Limit("api", 1)])  # fmt: skip
    factory = PipelineFactory(pipeline, store=store, registry=registry)
    paused = factory.prepare()
    assert paused.run(timeout=30).status == "paused"
    tracker.gate.clear()
    other = factory.prepare(state={"ok": True})
    other_future = other.start()  # the paused run's slot is free: this one takes it
    wait_for_status(store, other.run_id, "running")
    resumed = factory.resume(paused.run_id, patch={"ok": True})
    assert store.get_run(paused.run_id).status == "queued"  # no slot: it waits
    resumed_future = resumed.start()
    tracker.gate.set()
    assert other_future.result(30).status == "succeeded"
    assert resumed_future.result(30).status == "succeeded"
    assert tracker.peak["all"] == 1


def test_a_sleeping_run_frees_its_slot_and_queues_when_it_wakes(store):
    clock = ManualClock()
    tracker = Tracker()
    pipeline = Pipeline("api", [
        Stage("nap", 1, router=lambda s, r: None if s.get("woke") else Sleep("nap", seconds=60)),
        Stage("call", 2, steps=[Step("call", tracker.step())]),
    ], limits=[Limit("api", 1)])  # fmt: skip
    with Registry(clock=clock) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        sleeper = factory.prepare()
        assert sleeper.run(timeout=30).status == "sleeping"
        tracker.gate.clear()
        busy = factory.prepare(state={"woke": True})
        busy_future = busy.start()
        wait_for_status(store, busy.run_id, "running")
        advance(clock, 60.0, registry)  # it wakes, finds no slot, waits queued
        assert wait_for_status(store, sleeper.run_id, "queued")
        tracker.gate.set()
        assert busy_future.result(30).status == "succeeded"
        wait_for_status(store, sleeper.run_id, "sleeping")  # admitted, ran nap again
        assert registry.stats()["admitted"] >= 1


def test_a_queued_run_can_be_aborted(store, registry):
    tracker = Tracker()
    tracker.gate.clear()
    factory = PipelineFactory(limited(tracker, Limit("api", 1)), store=store, registry=registry)
    running = factory.prepare()
    running_future = running.start()
    queued = factory.prepare()
    queued_future = queued.start()
    wait_for_stats(registry, queued=1)
    queued.abort("not needed")
    assert queued_future.result(30).status == "aborted"
    assert store.get_run(queued.run_id).status == "aborted"
    tracker.gate.set()
    assert running_future.result(30).status == "succeeded"
    assert tracker.entered == [running.run_id]


def test_a_key_function_that_fails_is_refused_at_prepare(store, registry):
    tracker = Tracker()
    limit = Limit("api", 1, key=lambda state: state["customer"])
    factory = PipelineFactory(limited(tracker, limit), store=store, registry=registry)
    with pytest.raises(AdmissionError, match="key function of limit 'api' raised"):
        factory.prepare()
    bad = Limit("api", 1, key=lambda state: 7)
    with pytest.raises(AdmissionError, match="return a non-empty string"):
        PipelineFactory(limited(tracker, bad), store=store, registry=registry).prepare()
    assert store.list_runs() == []


def test_limits_need_a_registry(store):
    factory = PipelineFactory(limited(Tracker(), Limit("api", 1)), store=store)
    with pytest.raises(StagelineError, match="needs a Registry"):
        factory.prepare().run(timeout=10)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("", 1), "name must be a non-empty string"),
        (("api", 0), "max_running must be an integer >= 1"),
        (("api", 1.5), "max_running must be an integer >= 1"),
    ],
)
def test_a_bad_limit_is_refused_naming_the_problem(args, words):
    with pytest.raises(DefinitionError, match=words):
        Limit(*args)


def test_bad_keys_rates_and_duplicates_are_refused():
    with pytest.raises(DefinitionError, match="key must be a function"):
        Limit("api", 1, key="customer")
    with pytest.raises(DefinitionError, match=r"rate must be \(n, seconds\)"):
        Limit("api", 1, rate=(0, 1.0))
    with pytest.raises(DefinitionError, match="limit 'api' is given twice"):
        Pipeline("p", [Stage("a", 1, router=lambda s, r: None)],
                 limits=[Limit("api", 1), Limit("api", 2)])  # fmt: skip


def test_priority_must_be_an_integer(registry):
    factory = PipelineFactory(limited(Tracker(), Limit("api", 1)), registry=registry)
    with pytest.raises(StagelineError, match="priority must be an integer"):
        factory.prepare(priority="high")


def test_resume_of_a_queued_run_says_it_is_not_paused(store, registry):
    tracker = Tracker()
    tracker.gate.clear()
    factory = PipelineFactory(limited(tracker, Limit("api", 1)), store=store, registry=registry)
    futures = [factory.prepare().start() for _ in range(2)]
    wait_for_stats(registry, queued=1)
    queued = next(r for r in store.list_runs() if r.status == "queued")
    with pytest.raises(RunNotPaused):
        factory.resume(queued.run_id)
    tracker.gate.set()
    assert {f.result(30).status for f in futures} == {"succeeded"}


def test_another_registry_adopts_queued_runs_whose_registry_stopped(store):
    tracker = Tracker()
    tracker.gate.clear()
    pipeline = limited(tracker, Limit("api", 1))
    first = Registry()
    factory = PipelineFactory(pipeline, store=store, registry=first)
    runs = [factory.prepare() for _ in range(3)]
    for run in runs:
        run.start()
    wait_for_stats(first, queued=2)
    first.stop(timeout=0.2)  # its step is stuck: the run is left running, its lease released
    tracker.gate.set()
    assert [store.get_run(r.run_id).status for r in runs] == ["running", "queued", "queued"]
    with Registry() as second:
        adopted = second.recover(PipelineFactory(pipeline, store=store, registry=second))
        assert len(adopted) == 3
        for run in runs:
            wait_for_status(store, run.run_id, "succeeded", timeout=30)
    assert tracker.peak["all"] == 1


def test_registry_stats_show_each_limit_and_key(store, registry):
    tracker = Tracker()
    tracker.gate.clear()
    limit = Limit("api", 1, key=lambda state: state["customer"])
    factory = PipelineFactory(limited(tracker, limit), store=store, registry=registry)
    futures = [factory.prepare(state={"customer": "acme"}).start() for _ in range(3)]
    wait_for_stats(registry, queued=2)
    stats = registry.stats()
    assert (stats["limit:api:acme:running"], stats["limit:api:acme:queued"]) == (1, 2)
    tracker.gate.set()
    assert {f.result(30).status for f in futures} == {"succeeded"}
    assert "limit:api:acme:running" not in registry.stats()  # no runs: no line


def test_ten_customers_a_busy_one_never_delays_the_others_first_runs(store, registry):
    tracker = Tracker()
    tracker.gate.clear()  # every run stays in its step: slots stay taken
    limit = Limit("api", 2, key=lambda state: state["customer"])
    factory = PipelineFactory(limited(tracker, limit), store=store, registry=registry)
    busy = [factory.prepare(state={"customer": "c0"}).start() for _ in range(200)]
    wait_for_stats(registry, queued=198, timeout=60)
    others = [factory.prepare(state={"customer": f"c{n}"}) for n in range(1, 10)]
    futures = [run.start() for run in others]
    for run in others:  # each starts at once, on its own key's slots, not after c0's 198
        wait_for_status(store, run.run_id, "running")
    assert registry.stats()["queued"] == 198
    tracker.gate.set()
    assert {f.result(120).status for f in [*busy, *futures]} == {"succeeded"}
    assert all(peak <= 2 for peak in tracker.peak.values())
    assert tracker.peak["c0"] == 2


def test_a_queued_run_resumed_from_the_store_runs_once_when_started(store, registry):
    tracker = Tracker()
    pipeline = Pipeline("api", [
        Stage("ask", 1, router=lambda state, results: None if state.get("ok") else Pause("ask")),
        Stage("call", 2, steps=[Step("call", tracker.step())]),
    ], limits=[Limit("api", 1)])  # fmt: skip
    factory = PipelineFactory(pipeline, store=store, registry=registry, clock=None)
    paused = factory.prepare()
    paused.run(timeout=30)
    registry.supervisor.forget(registry.supervisor.lookup(paused.run_id))  # the slow path
    registry.stats()
    tracker.gate.clear()
    busy = factory.prepare(state={"ok": True})
    busy_future = busy.start()
    wait_for_status(store, busy.run_id, "running")
    resumed = factory.resume(paused.run_id, patch={"ok": True})
    assert store.get_run(paused.run_id).status == "queued"
    tracker.gate.set()
    assert busy_future.result(30).status == "succeeded"
    assert resumed.run(timeout=30).status == "succeeded"
    assert tracker.entered.count(paused.run_id) == 1 and tracker.peak["all"] == 1


def test_a_start_that_cannot_take_its_slot_can_be_started_again(store, registry):
    class Refusing:
        def __init__(self, inner):
            self.inner, self.fail = inner, True

        def admit(self, *args):
            if self.fail:
                self.fail = False
                from stageline import StoreError

                raise StoreError("the database is locked")
            return self.inner.admit(*args)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    tracker = Tracker()
    refusing = Refusing(store)
    factory = PipelineFactory(limited(tracker, Limit("api", 1)), store=refusing,
                              registry=registry)  # fmt: skip
    run = factory.prepare()
    with pytest.raises(StagelineError, match="locked"):
        run.start()
    assert run.run(timeout=30).status == "succeeded"


def test_a_queued_run_another_process_aborts_ends_aborted_in_its_registry(store):
    tracker = Tracker()
    tracker.gate.clear()
    with Registry() as holder, Registry() as other:
        factory = PipelineFactory(limited(tracker, Limit("api", 1)), store=store,
                                  registry=holder)  # fmt: skip
        first = factory.prepare()
        first_future = first.start()
        queued = factory.prepare()
        queued_future = queued.start()
        wait_for_stats(holder, queued=1)
        elsewhere = PipelineFactory(limited(tracker, Limit("api", 1)), store=store,
                                    registry=other)  # fmt: skip
        elsewhere.abort(queued.run_id, "cancelled")  # the flag: its holder aborts it
        tracker.gate.set()
        assert first_future.result(30).status == "succeeded"
        assert queued_future.result(30).status == "aborted"
    assert tracker.entered == [first.run_id]


def test_a_registry_stalled_past_its_lease_stops_its_limited_runs(store):
    clock = ManualClock()
    tracker = Tracker()
    tracker.gate.clear()
    with Registry(clock=clock, lease_ttl=30.0) as registry:
        factory = PipelineFactory(limited(tracker, Limit("api", 1)), store=store,
                                  registry=registry)  # fmt: skip
        run = factory.prepare()
        future = run.start()
        wait_for_status(store, run.run_id, "running")
        for _ in range(3):  # renewals every 10 s: its lease runs 30 s past the last one
            advance(clock, 10.0, registry)
        advance(clock, 100.0, registry)  # stalled: the next renewal comes after the lease
        with pytest.raises(StagelineError, match="stopped"):
            future.result(10)
        assert store.get_run(run.run_id).status == "running"  # left for a recovery
        assert registry.stats()["live"] == 0
        tracker.gate.set()


def test_a_child_pipeline_with_limits_is_refused():
    child = Pipeline("kid", [Stage("k", 1, router=lambda s, r: None)], limits=[Limit("api", 1)])
    with pytest.raises(DefinitionError, match="child pipeline 'kid' has limits"):
        Pipeline("parent", [Stage("fan", 1, pipelines=[child])])
