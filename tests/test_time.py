"""Durable time (SPEC section 15): runs that sleep, and pauses that expire, on every store.

Everything here is driven by a ManualClock: a timer fires when the test advances the clock
past it, never on a sleep. A registry that slept a run wakes it; after a restart, a new
registry's `recover` takes the timers over from the store.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

from stageline import (
    PIPELINE_DATA_KEY,
    Pause,
    Pipeline,
    PipelineFactory,
    Registry,
    RunExpired,
    RunNotPaused,
    Sleep,
    Stage,
    Step,
)
from stageline.core.clock import iso_utc
from stageline.testing import EventRecorder, ManualClock, advance, wait_for_status

pytestmark = pytest.mark.timeout(60)

SECONDS = 60.0


def put_artifact(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    ctx.artifacts.put("token", "t-1")
    return {"n": state.get("n", 0) + 1}


def after_wake(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"woke": True, "token": ctx.artifacts.get("token")}


def sleepy(seconds: float = SECONDS, **stages: Any) -> Pipeline:
    return Pipeline(
        "sleepy",
        [
            Stage("nap", 1, steps=[Step("put", put_artifact)],
                  router=lambda state, results: Sleep("wake", seconds=seconds)),
            Stage("wake", 2, steps=[Step("after", after_wake)]),
        ],
    )  # fmt: skip


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def registry(clock):
    with Registry(clock=clock) as registry:
        yield registry


def journal(store, run_id: str) -> list[tuple[str, Any]]:
    return [(e.name, e.stage_id) for e in store.read_events(run_id)]


# --- sleeping -------------------------------------------------------------------------------


def test_a_sleeping_run_commits_its_wake_time_and_holds_no_actor(store, clock, registry):
    factory = PipelineFactory(sleepy(), store=store, registry=registry)
    run = factory.prepare()
    events = EventRecorder(run)
    result = run.run(timeout=10)
    assert result.status == "sleeping"
    info = store.get_run(run.run_id)
    assert info.status == "sleeping"
    assert info.wake_at == dt.datetime.fromtimestamp(clock.wall() + SECONDS, dt.UTC)
    assert info.stage == "wake"
    stats = registry.stats()
    assert (stats["live"], stats["wake_timers"], stats["slept"]) == (0, 1, 1)
    success, sleeping = events.of("stage:success")[0], events.of("pipeline:sleeping")[0]
    assert success.routing == "sleep"
    assert sleeping.wake_at == iso_utc(clock.wall() + SECONDS)
    assert events.names()[-1] == "pipeline:sleeping"
    assert journal(store, run.run_id)[-2:] == [("stage:success", "nap"),
                                               ("pipeline:sleeping", None)]  # fmt: skip


def test_it_wakes_when_due_never_early_and_keeps_its_artifacts(store, clock, registry):
    factory = PipelineFactory(sleepy(), store=store, registry=registry)
    run = factory.prepare()
    run.run(timeout=10)
    advance(clock, SECONDS - 0.001, registry)
    assert store.get_run(run.run_id).status == "sleeping"
    advance(clock, 0.001, registry)
    info = wait_for_status(store, run.run_id, "succeeded")
    assert info.state == {"n": 1, "woke": True, "token": "t-1"}
    assert info.wake_at is None and info.checkpoint is None
    names = [name for name, _ in journal(store, run.run_id)]
    assert names.count("pipeline:start") == 2
    assert registry.stats()["woken"] == 1


def test_sleep_until_an_aware_datetime(store, clock, registry):
    until = dt.datetime.fromtimestamp(clock.wall() + 3600, dt.UTC)
    pipeline = Pipeline("until", [
        Stage("a", 1, router=lambda state, results: Sleep("b", until=until)),
        Stage("b", 2, steps=[Step("s", lambda state, ctx: {"done": True})]),
    ])  # fmt: skip
    run = PipelineFactory(pipeline, store=store, registry=registry).prepare()
    run.run(timeout=10)
    assert store.get_run(run.run_id).wake_at == until
    advance(clock, 3599, registry)
    assert store.get_run(run.run_id).status == "sleeping"
    advance(clock, 1, registry)
    assert wait_for_status(store, run.run_id, "succeeded").state == {"done": True}


def test_a_resume_wakes_it_early_with_a_patch_and_the_timer_then_does_nothing(
    store, clock, registry
):
    factory = PipelineFactory(sleepy(), store=store, registry=registry)
    run = factory.prepare()
    run.run(timeout=10)
    result = factory.resume(run.run_id, patch={"early": True}).run(timeout=10)
    assert result.status == "succeeded"
    assert result.state == {"n": 1, "early": True, "woke": True, "token": "t-1"}
    advance(clock, SECONDS * 2, registry)
    names = [name for name, _ in journal(store, run.run_id)]
    assert names.count("pipeline:start") == 2  # woken once, not twice
    assert registry.stats()["woken"] == 0


def test_a_sleeping_run_can_be_aborted_without_starting_it(store, clock, registry):
    factory = PipelineFactory(sleepy(), store=store, registry=registry)
    run = factory.prepare()
    run.run(timeout=10)
    factory.abort(run.run_id, "no longer needed")
    info = store.get_run(run.run_id)
    assert info.status == "aborted" and "while sleeping" in info.error["message"]
    advance(clock, SECONDS, registry)
    assert store.get_run(run.run_id).status == "aborted"


def test_a_restarted_registry_wakes_what_an_earlier_one_slept(store, clock):
    with Registry(clock=clock) as first:
        run = PipelineFactory(sleepy(), store=store, registry=first).prepare()
        run.run(timeout=10)
    with Registry(clock=clock) as second:
        factory = PipelineFactory(sleepy(), store=store, registry=second)
        assert second.recover(factory) == []
        assert second.stats()["wake_timers"] == 1
        advance(clock, SECONDS - 1, second)
        assert store.get_run(run.run_id).status == "sleeping"
        advance(clock, 1, second)
        assert wait_for_status(store, run.run_id, "succeeded").state["token"] == "t-1"


def test_a_run_found_overdue_at_recovery_wakes_at_once(store, clock):
    with Registry(clock=clock) as first:
        run = PipelineFactory(sleepy(), store=store, registry=first).prepare()
        run.run(timeout=10)
    clock.advance(SECONDS * 10)  # nobody was up when it was due
    with Registry(clock=clock) as second:
        second.recover(PipelineFactory(sleepy(), store=store, registry=second))
        advance(clock, 0, second)
        assert wait_for_status(store, run.run_id, "succeeded").state["woke"] is True


def test_two_registries_on_one_store_wake_a_run_exactly_once(store, clock):
    with Registry(clock=clock) as one, Registry(clock=clock) as two:
        run = PipelineFactory(sleepy(), store=store, registry=one).prepare()
        run.run(timeout=10)
        two.recover(PipelineFactory(sleepy(), store=store, registry=two))
        advance(clock, SECONDS, one, two)
        wait_for_status(store, run.run_id, "succeeded")
        assert one.stats()["woken"] + two.stats()["woken"] == 1
    names = [name for name, _ in journal(store, run.run_id)]
    assert names.count("pipeline:start") == 2


def test_sleep_in_a_child_pipeline_fails_the_run_with_a_clear_error(store, registry):
    child = Pipeline("kid", [Stage("k", 1, router=lambda state, results: Sleep("k", seconds=1))])
    parent = Pipeline("parent", [Stage("fan", 1, pipelines=[child])])
    result = PipelineFactory(parent, store=store, registry=registry).prepare().run(timeout=10)
    assert result.status == "failed"
    assert "only a run's top-level pipeline" in str(result.error)


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (lambda: Sleep("b"), "exactly one of seconds= or until="),
        (lambda: Sleep("b", seconds=-1), "seconds must be a number >= 0"),
        (lambda: Sleep("b", until=dt.datetime(2030, 1, 1)), "timezone-aware"),
        (lambda: Sleep("nowhere", seconds=1), "unknown Sleep.resume_at 'nowhere'"),
        (lambda: Pause("b", on_expiry="b"), "on_expiry needs expires_in"),
        (lambda: Pause("b", expires_in=1, on_expiry="gone"), "unknown Pause.on_expiry 'gone'"),
    ],
)
def test_a_bad_time_answer_fails_the_stage_naming_the_problem(registry, answer, words):
    pipeline = Pipeline("bad", [
        Stage("a", 1, router=lambda state, results: answer()),
        Stage("b", 2, steps=[Step("s", lambda state, ctx: None)]),
    ])  # fmt: skip
    result = PipelineFactory(pipeline, registry=registry).prepare().run(timeout=10)
    assert result.status == "failed"
    assert words in str(result.error)


# --- pause deadlines ------------------------------------------------------------------------


def seen_expired(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"expired_seen": state.get(PIPELINE_DATA_KEY, {}).get("expired", False)}


def deadline(on_expiry: str | None = "late") -> Pipeline:
    return Pipeline("deadline", [
        Stage("ask", 1, steps=[Step("put", put_artifact)],
              router=lambda state, results: Pause("approved", expires_in=30.0,
                                                  on_expiry=on_expiry)),
        Stage("approved", 2, steps=[Step("ok", lambda state, ctx: {"approved": True})],
              router=lambda state, results: "end"),
        Stage("late", 3, steps=[Step("late", seen_expired)]),
        Stage("end", 4, steps=[Step("end", seen_expired)]),
    ])  # fmt: skip


def test_an_expired_pause_goes_on_at_on_expiry_which_sees_the_mark(store, clock, registry):
    factory = PipelineFactory(deadline(), store=store, registry=registry)
    run = factory.prepare()
    result = run.run(timeout=10)
    assert result.status == "paused"
    assert result.checkpoint.expires_at == iso_utc(clock.wall() + 30.0)
    assert result.checkpoint.on_expiry == "late"
    assert store.get_run(run.run_id).wake_at is not None
    advance(clock, 29.999, registry)
    assert store.get_run(run.run_id).status == "paused"
    advance(clock, 0.001, registry)
    info = wait_for_status(store, run.run_id, "succeeded")
    # the mark is seen by the on_expiry stage only: the next stage's step sees none
    assert info.state == {"n": 1, "expired_seen": False}
    late = [e for e in store.read_events(run.run_id) if e.name == "stage:success"]
    assert [e.stage_id for e in late] == ["late", "end"]
    assert with_mark_seen_by(store, run.run_id) == ["late"]


def with_mark_seen_by(store, run_id: str) -> list[str]:
    """The stages whose step results say they saw the expiry mark."""
    return [
        e.stage_id
        for e in store.read_events(run_id)
        if e.name == "stage:success" and (e.results or {}).get("late", {}).get("expired_seen")
    ]


def test_an_expired_pause_without_on_expiry_ends_expired(store, clock, registry):
    factory = PipelineFactory(deadline(on_expiry=None), store=store, registry=registry)
    run = factory.prepare()
    run.run(timeout=10)
    advance(clock, 30.0, registry)
    info = wait_for_status(store, run.run_id, "expired")
    assert info.checkpoint is None and info.wake_at is None
    with pytest.raises(RunExpired):
        factory.resume(run.run_id)


def test_a_resume_before_the_deadline_wins_and_the_deadline_then_does_nothing(
    store, clock, registry
):
    factory = PipelineFactory(deadline(), store=store, registry=registry)
    run = factory.prepare()
    run.run(timeout=10)
    result = factory.resume(run.run_id).run(timeout=10)
    assert result.status == "succeeded" and result.state["approved"] is True
    advance(clock, 60.0, registry)
    assert store.get_run(run.run_id).status == "succeeded"
    assert registry.stats()["expired"] == 0


def test_a_deadline_is_durable_across_a_restart_measured_from_the_pause(store, clock):
    with Registry(clock=clock) as first:
        run = PipelineFactory(deadline(), store=store, registry=first).prepare()
        run.run(timeout=10)
        advance(clock, 20.0, first)
    with Registry(clock=clock) as second:
        second.recover(PipelineFactory(deadline(), store=store, registry=second))
        advance(clock, 9.0, second)  # 29 s after the pause: not yet
        assert store.get_run(run.run_id).status == "paused"
        advance(clock, 1.0, second)
        assert wait_for_status(store, run.run_id, "succeeded").state["expired_seen"] is False
        assert with_mark_seen_by(store, run.run_id) == ["late"]


def test_pause_expires_in_in_a_child_pipeline_is_refused(registry):
    child = Pipeline("kid", [
        Stage("k", 1, router=lambda state, results: Pause("k", expires_in=5)),
    ])  # fmt: skip
    parent = Pipeline("parent", [Stage("fan", 1, pipelines=[child])])
    result = PipelineFactory(parent, registry=registry).prepare().run(timeout=10)
    assert result.status == "failed"
    assert "Pause(expires_in=...)" in str(result.error)


def test_a_resume_racing_the_expiry_has_exactly_one_outcome(store, clock, registry):
    factory = PipelineFactory(deadline(on_expiry=None), store=store, registry=registry)
    outcomes = {"resumed": 0, "expired": 0}
    for _ in range(200 if store.__class__.__name__ == "MemoryStore" else 40):
        run = factory.prepare()
        run.run(timeout=10)
        clock.advance(30.0)  # the expiry is due: its timer fires on the timer thread
        try:
            factory.resume(run.run_id).run(timeout=10)
        except (RunExpired, RunNotPaused):
            pass
        registry.supervisor.timers.wait_idle()
        registry.stats()
        info = store.get_run(run.run_id)
        assert info.status in ("succeeded", "expired")
        outcomes["resumed" if info.status == "succeeded" else "expired"] += 1
        starts = [e for e in store.read_events(run.run_id) if e.name == "pipeline:start"]
        assert len(starts) == (2 if info.status == "succeeded" else 1)
    assert sum(outcomes.values()) in (200, 40)


# --- many sleepers ---------------------------------------------------------------------------


def test_thousands_of_sleeping_runs_wake_in_order_once_each_without_threads(store, clock):
    import random

    from stageline.core import lifecycle
    from stageline.core import transitions as tr
    from stageline.core.store import RunRecord

    woke: list[tuple[str, float]] = []
    lock = threading.Lock()
    count = 10_000 if store.__class__.__name__ == "MemoryStore" else 2_000

    def record_wake(state: dict[str, Any], ctx: Any) -> None:
        with lock:
            woke.append((ctx.run_id, clock.wall()))

    pipeline = Pipeline("many", [
        Stage("nap", 1, router=lambda state, results: Sleep("wake", seconds=state["d"])),
        Stage("wake", 2, steps=[Step("w", record_wake)]),
    ])  # fmt: skip
    rng = random.Random(7)
    due: dict[str, float] = {}
    now = clock.wall()
    for i in range(count):  # sleeping rows written straight to the store: fast to set up
        run_id = f"r{i:05d}"
        record = RunRecord(run_id, "many", 1, lifecycle.RUNNING, {"d": rng.uniform(1, 3600)},
                           "nap", created_at=now, updated_at=now)  # fmt: skip
        due[run_id] = now + record.state["d"]
        commit = tr.sleep(record, now, tr.Progress(0, 1), pipeline=pipeline,
                          stage=pipeline.stage("nap"), answer=Sleep("wake", seconds=record.state["d"]),
                          state=record.state)  # fmt: skip
        store.create_run(record)
        store.commit(commit)
    threads_before = threading.active_count()
    with Registry(clock=clock) as registry:
        registry.recover(PipelineFactory(pipeline, store=store, registry=registry))
        assert registry.stats()["wake_timers"] == count
        assert threading.active_count() <= threads_before + 2  # the registry's actor and timer
        for _ in range(36):
            advance(clock, 100.0, registry)
        advance(clock, 1.0, registry)
        deadline_ = 30.0
        registry.supervisor.timers.wait_idle(deadline_)
        for run_id in due:
            wait_for_status(store, run_id, "succeeded", timeout=deadline_)
    assert sorted(run_id for run_id, _ in woke) == sorted(due)  # each exactly once
    for run_id, wake_at in due.items():
        starts = [e.ts for e in store.read_events(run_id) if e.name == "pipeline:start"]
        assert len(starts) == 1  # the wake's (the sleep was written straight to the store)
        assert wake_at <= starts[0] < wake_at + 100.0 + 1e-6  # never early; at the first
        # advance of the clock past it, so in order of wake_at, 100 s apart at most


def test_a_sleeping_run_costs_its_registry_under_2_kib(clock):
    import tracemalloc

    from stageline.actors.registry_messages import ArmWakes
    from stageline.core.store import Waking

    count = 10_000
    with Registry(clock=clock) as registry:
        registry.stats()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            waking = tuple(  # as recover() lists them from a store
                Waking(f"0193a8f2-7c4e-7d51-9b1c-{i:012d}", "pipeline", "sleeping",
                       clock.wall() + 3600 + i)
                for i in range(count)
            )  # fmt: skip
            registry.supervisor.actor.tell(ArmWakes(waking))
            del waking
            assert registry.stats()["wake_timers"] == count
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert used / count < 2048, f"{used / count:.0f} bytes per sleeping run"


# --- what an operator sees ------------------------------------------------------------------


def test_the_cli_lists_sleeping_runs_and_shows_when_they_wake(tmp_path):
    import json

    from cli_helpers import cli_env, cli_ok

    from stageline.stores import SqliteStore

    path = tmp_path / "runs.db"
    store = SqliteStore(path)
    with Registry() as registry:
        factory = PipelineFactory(sleepy(seconds=3600), store=store, registry=registry)
        sleeping = factory.prepare()
        sleeping.run(timeout=10)
        paused = PipelineFactory(deadline(), store=store, registry=registry).prepare()
        paused.run(timeout=10)
    store.close()
    env = cli_env(f"sqlite:///{path}")
    listed = cli_ok("runs", "--status", "sleeping", env=env, cwd=tmp_path)
    assert sleeping.run_id in listed and paused.run_id not in listed
    assert "wake (wakes in 59 min)" in listed or "wake (wakes in 1 h)" in listed
    shown = cli_ok("show", sleeping.run_id, env=env, cwd=tmp_path)
    assert "wakes" in shown and ("in 59 min" in shown or "in 1 h" in shown)
    as_json = json.loads(cli_ok("show", sleeping.run_id, "--json", env=env, cwd=tmp_path))
    assert as_json["status"] == "sleeping"
    assert as_json["wake_at"].endswith("+00:00") or as_json["wake_at"].endswith("Z")
    shown = cli_ok("show", paused.run_id, env=env, cwd=tmp_path)
    assert "expires" in shown and "then on at late" in shown
