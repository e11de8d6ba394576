"""Child pipelines across processes: a child's pause resumed by another process, and
SIGKILL at random moments while children run, leaving only whole child stages behind.

The workers are tests/children_worker.py subprocesses sharing one store: a SQLite file,
or a PostgreSQL schema of this test (a store URL `postgresql://...?schema=...`; skipped like
every PostgreSQL test when no server answers, unless STAGELINE_REQUIRE_PG=1).
"""

from __future__ import annotations

import json
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from children_worker import CHILDREN, STAGES, STEPS, crash_pipeline  # tests/ is on sys.path
from test_crash import worker_env
from test_crash_faults import STORE_KINDS, open_location, settle

from stageline import PIPELINE_DATA_KEY, PipelineFactory, Registry, Store

pytestmark = pytest.mark.timeout(240)

WORKER = Path(__file__).with_name("children_worker.py")
SEED = 20261124
MAX_ITERATIONS = 30
MID_RUN_KILLS = 6  # stop once this many kills landed while the children ran


@pytest.fixture(params=STORE_KINDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the workers keep their runs: a SQLite file's path, or a store URL on a
    PostgreSQL schema of this test (conftest.pg_url: dropped after the test)."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    return str(request.getfixturevalue("pg_url"))


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )


def run_worker(*args: str) -> dict[str, Any]:
    proc = spawn(*args)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, f"worker {args[0]} exited {proc.returncode}: {out}\n{err}"
    lines = [line for line in out.splitlines() if line and line != "ready"]
    return dict(json.loads(lines[-1]))


def test_child_pause_resumes_in_another_process(location: str) -> None:
    paused = run_worker("pause", location, "r1")
    assert paused["status"] == "paused"
    assert sorted(paused["steps"]) == [["billing", "charge"], ["shipping", "pack"]]
    resumed = run_worker("resume", location, "r1", json.dumps({"approval": "yes"}))
    assert resumed["status"] == "succeeded"
    assert resumed["steps"] == [["billing", "confirm"], ["pausefan", "done"]]  # nothing again
    assert resumed["state"]["confirmed"] == "yes"
    ran = {key: value for key, value in resumed["state"].items() if key.startswith("ran_")}
    assert sorted(map(sorted, ran.values())) == [["charge", "pack"], ["confirm", "done"]]


def whole_stages(state: dict[str, Any], child: str, where: str) -> int:
    """How many stages of `child` the state holds; every one must be whole, in order."""
    stages = state.get(child, {})
    m = len(stages)
    assert sorted(stages) == sorted(f"s{k}" for k in range(1, m + 1)), f"{where}: {stages}"
    for k in range(1, m + 1):
        assert stages[f"s{k}"] == {f"j{j}": k for j in range(STEPS)}, f"{where}: torn s{k}"
    return m


def check_run(store: Store, run_id: str, where: str) -> tuple[str, dict[str, int]]:
    """State, child positions, journal and status agree on whole committed child stages."""
    record = store.load_run(run_id)
    state = record.state
    done = {child: whole_stages(state, child, f"{where} {child}") for child in CHILDREN}
    positions = state.get(PIPELINE_DATA_KEY, {}).get("children", {})
    journal = store.read_events(run_id)
    successes = Counter(
        e.path[-1].pipeline_id for e in journal if e.name == "stage:success" and len(e.path) == 2
    )
    for child, m in done.items():
        assert successes[child] == m, f"{where}: {child} journal {successes[child]} != {m}"
        position = positions.get(f"crashfan/fan/{child}")
        if record.status == "succeeded":
            assert m == STAGES and position is None, f"{where}: {child} {m} {position}"
        elif m == STAGES:
            assert position == {"status": "succeeded", "stage": None, "stage_runs": STAGES}
        elif m > 0:
            assert position == {"status": "running", "stage": f"s{m + 1}", "stage_runs": m}
        else:
            assert position is None, f"{where}: {child} has no stage but {position}"
    assert record.status in ("pending", "running", "succeeded"), f"{where}: {record.status}"
    assert state.get("ended", False) is (record.status == "succeeded"), where
    return record.status, done


def test_sigkill_while_children_run_leaves_whole_child_stages(location: str) -> None:
    rng = random.Random(SEED)
    durations = []
    for name in ("baseline-0", "baseline-1"):  # the faster of two: load varies
        baseline = spawn("crash", location, name)
        wait_ready(baseline)
        t0 = time.monotonic()
        baseline.communicate(timeout=60)
        durations.append(time.monotonic() - t0)
        assert baseline.returncode == 0
    duration = min(durations)

    mid_run: list[dict[str, int]] = []
    for i in range(MAX_ITERATIONS):
        if len(mid_run) >= MID_RUN_KILLS:
            break
        run_id = f"run-{i:02d}"
        delay = rng.uniform(0.0, duration)
        where = f"seed={SEED} iteration={i} delay={delay:.3f}s of {duration:.3f}s"
        proc = spawn("crash", location, run_id)
        wait_ready(proc)
        time.sleep(delay)  # the deliberate random kill moment
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        settle(location)  # PostgreSQL: the killed worker's transaction is over
        store = open_location(location)
        try:
            if run_id in {info.run_id for info in store.list_runs()}:
                status, done = check_run(store, run_id, where)
                if status == "running":
                    mid_run.append(done)
            check_run(store, "baseline-0", where)
        finally:
            store.close()
    print(f"seed={SEED} run={duration:.3f}s child stages committed when killed: {mid_run}")
    assert len(mid_run) >= MID_RUN_KILLS, f"too few kills landed while children ran: {mid_run}"
    assert any(0 < m < STAGES for done in mid_run for m in done.values()), mid_run
    recover_all(location, len(mid_run))


def recover_all(location: str, expected: int) -> None:
    """Recovery continues every killed run; no committed child stage runs again."""
    store = open_location(location)
    try:
        with Registry() as registry:
            contexts = registry.recover(PipelineFactory(crash_pipeline(), store=store))
            assert len(contexts) == expected
            for context in contexts:
                result = context.wait(timeout=60)
                assert result.status == "succeeded", result.error
        for context in contexts:
            status, done = check_run(store, context.run_id, f"recovered {context.run_id}")
            assert status == "succeeded" and set(done.values()) == {STAGES}
            committed = Counter(
                (e.path[-1].pipeline_id, e.stage_id)
                for e in store.read_events(context.run_id)
                if e.name == "stage:success"
            )
            assert set(committed.values()) == {1}, f"a stage committed twice: {committed}"
    finally:
        store.close()


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 60.0)
    line = proc.stdout.readline() if readable else ""
    if line != "ready\n":
        proc.kill()
        pytest.fail(f"worker not ready ({line!r}): {proc.communicate(timeout=30)[1]}")
