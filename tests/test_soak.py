"""Soak (issue 9): many runs through one Registry with pauses, resumes, failures, retries
and aborts mixed; afterwards no thread is left behind, memory is flat, and every run is
where its scenario says, consistent with its journal (tests/invariants.py).

The CI size is bounded (about two seconds of runs); `python scripts/soak.py --runs 100000`
is the long form. The soak runs in a fresh interpreter: a process that has not imported
everything yet is where first-use races live (it found one in the logging setup).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from invariants import check_store

import stageline
from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.actors.carriers import IDLE_NAME, MAX_IDLE, shared_carriers
from stageline.actors.workers import shared_workers
from stageline.stores import SqliteStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"
CI_RUNS = 1000
MAX_SECOND_HALF_GROWTH_MB = 16  # measured ~1 MB; a per-run leak of 32 KiB would show


def test_soak_of_mixed_runs_leaves_no_thread_and_flat_memory(tmp_path):
    root = str(Path(stageline.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
    }
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--runs",
            str(CI_RUNS),
            "--concurrency",
            "8",
            "--db",
            str(tmp_path / "soak.db"),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    print(report)  # the figures, for the CI log
    assert report["wrong"] == [], report
    assert sum(report["final"].values()) == CI_RUNS
    assert set(report["final"]) == {"succeeded", "failed", "aborted"}
    assert report["threads_after"] <= report["threads_before"], report
    assert report["rss_second_half_growth_mb"] < MAX_SECOND_HALF_GROWTH_MB, report
    stats = report["registry"]
    assert stats["live"] == 0 and stats["restarts"] > 0 and stats["exported"] > 0
    assert stats["resumed_fast"] > 0
    assert report["ok"] is True


def test_a_thousand_live_paused_runs_hold_no_thread(tmp_path):
    """SPEC 7: a paused run holds no thread, only memory, for as long as its window lasts."""
    workers = shared_workers()
    barrier = threading.Barrier(workers.max_threads + 1)
    for _ in range(workers.max_threads):  # the step pool at its bound: part of the baseline
        workers.submit(lambda: barrier.wait(10))
    barrier.wait(10)

    def collect(state, ctx):
        ctx.artifacts.put("n", state["n"])
        return {"collected": True}

    pipeline = Pipeline(
        "paused",
        [
            Stage("a", 1, steps=[Step("collect", collect)], router=lambda s, r: Pause("b")),
            Stage(
                "b", 2, steps=[Step("check", lambda s, c: {"ok": c.artifacts.get("n") == s["n"]})]
            ),
        ],
    )
    store = SqliteStore(tmp_path / "paused.db", synchronous="NORMAL")
    counter = iter(range(10**6))
    with Registry(default_pause_timeout=3600.0) as registry:
        factory = PipelineFactory(
            pipeline, store=store, registry=registry, initial_state=lambda: {"n": next(counter)}
        )
        first = factory.prepare().run(timeout=10)  # the registry's own threads now exist
        threads = len(_working_threads())
        futures = [factory.prepare().start() for _ in range(999)]
        results = [f.result(30) for f in futures]
        assert {r.status for r in results} == {"paused"}
        stats = registry.stats()
        assert stats["paused_live"] == 1000 and stats["running"] == 0
        # idle carriers belong to no run, and at most MAX_IDLE of them wait
        assert len(_working_threads()) <= threads, [t.name for t in threading.enumerate()]
        assert shared_carriers().idle_count() <= MAX_IDLE
        for result in (first, *results[:9]):  # the fast path still answers, then runs
            assert factory.resume(result.run_id).run(timeout=10).state["ok"] is True
        assert registry.stats()["resumed_fast"] == 10
    # stop() exported every live paused run's artifacts: each resumes from the store alone
    check_store(store, initial={"n": 0}, ignore=("n",))
    paused = store.list_runs(status="paused")
    assert len(paused) == 990 and all(info.checkpoint.container_bundle for info in paused)
    slow = PipelineFactory(pipeline, store=store)
    assert slow.resume(paused[-1].run_id).run(timeout=10).state["ok"] is True
    store.close()


def test_cancelled_timers_do_not_pile_up():
    """Was: a cancelled timer stayed in the timer heap until its deadline, so a daemon
    whose steps have long timeouts (or whose paused runs resume fast within long windows)
    kept every finished step's timer for up to that timeout: memory grew with the rate."""
    from stageline import ManualClock
    from stageline.actors.timers import TimerService

    clock = ManualClock()
    timers = TimerService(clock)
    fired = []
    try:
        keep = timers.schedule(7200.0, lambda: fired.append("kept"))
        for _ in range(100_000):
            timers.schedule(3600.0, lambda: fired.append("cancelled")).cancel()
        assert len(timers._heap) < 4096
        assert timers.pending() == 1
        clock.advance(7200.0)
        assert timers.wait_idle()
        assert fired == ["kept"] and not keep.cancelled
    finally:
        timers.stop()


def _working_threads() -> list[threading.Thread]:
    """Every thread but idle carriers (threads kept for the next actor: actors/carriers.py)."""
    return [t for t in threading.enumerate() if t.name != IDLE_NAME]
