"""Resume across processes (spec section 7): a run paused in one process resumes in another,
and resumes racing from several processes (slow path against slow path, and the registry's
fast path in one process against the slow path in another) are won exactly once.

Every process here is a tests/resume_worker.py subprocess sharing one store: a SQLite
file, or a PostgreSQL schema of this test (a store URL `postgresql://...?schema=...`; skipped
like every PostgreSQL test when no server answers, unless STAGELINE_REQUIRE_PG=1). Racing
workers print "ready" once set up and wait for a "go" line on stdin, written to all of them
together, so that their claims overlap.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from resume_worker import NOTE, PIPELINE_ID, SHARED, open_location  # tests/ is on sys.path

import stageline
from stageline import Store, read_checkpoint
from stageline.core.checkpoint import decode_bundle

pytestmark = pytest.mark.timeout(120)

WORKER = Path(__file__).with_name("resume_worker.py")
RUNS = 10

PAUSED_JOURNAL = [
    ("pipeline:start", None),
    ("stage:start", "s1"),
    ("stage:paused", "s1"),
    ("pipeline:paused", None),
]
RESUMED_JOURNAL = [
    ("pipeline:start", None),
    ("stage:start", "s3"),
    ("stage:success", "s3"),
    ("pipeline:success", None),
]


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the workers keep their runs: a SQLite file's path, or a store URL on a
    PostgreSQL schema of this test (conftest.pg_url: dropped after the test)."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    return str(request.getfixturevalue("pg_url"))


def worker_env() -> dict[str, str]:
    """The worker imports the same stageline as this process."""
    root = str(Path(stageline.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else os.pathsep.join((root, path))}


def spawn(*args: str, stdin: int = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )


def finish(proc: subprocess.Popen[str], what: str, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Wait for a worker; fail with its stderr unless it exited 0; its JSON lines."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{what}: worker still running after {timeout}s: {err}")
    assert proc.returncode == 0, f"{what}: worker exited {proc.returncode}:\n{out}\n{err}"
    return [json.loads(line) for line in out.splitlines() if line.strip() not in ("", "ready")]


def run_worker(*args: str) -> list[dict[str, Any]]:
    proc = spawn(*args, stdin=subprocess.DEVNULL)
    return finish(proc, " ".join(args[:1]))


def wait_ready(procs: list[subprocess.Popen[str]]) -> None:
    """Block (at most 60 s each) until every worker has printed "ready"."""
    for proc in procs:
        readable, _, _ = select.select([proc.stdout], [], [], 60.0)
        line = proc.stdout.readline() if readable else ""
        if line != "ready\n":
            for p in procs:
                p.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"worker not ready ({line!r}): {err}")


def release(procs: list[subprocess.Popen[str]]) -> None:
    """The start barrier: tell every ready worker to go, as close together as possible."""
    for proc in procs:
        proc.stdin.write("go\n")
    for proc in procs:
        proc.stdin.flush()  # communicate() closes it


def journal(store: Store, run_id: str) -> list[tuple[str, str | None]]:
    return [(e.name, e.stage_id) for e in store.read_events(run_id)]


def check_resumed_run(store: Store, run_id: str, winner: str) -> None:
    """The run succeeded once, from s3, with the winner's patch and the s1 artifacts."""
    info = store.get_run(run_id)
    assert info.status == "succeeded", f"{run_id}: {info}"
    assert info.checkpoint is None, f"{run_id}: checkpoint not cleared when the run ended"
    state = info.state
    assert state["winner"] == winner, f"{run_id}: state carries the patch of {state['winner']!r}"
    assert (state["s1_runs"], state["s3_runs"]) == (1, 1), f"{run_id}: {state}"
    assert "asked" not in state, f"{run_id}: s2 ran although the pause resumed at s3"
    assert state["note"] == NOTE and state["shared"] == SHARED, f"{run_id}: {state}"
    assert journal(store, run_id) == PAUSED_JOURNAL + RESUMED_JOURNAL, run_id


def pause_runs(location: str, run_ids: list[str]) -> None:
    lines = run_worker("pause", location, *run_ids)
    assert lines == [{"run_id": r, "status": "paused"} for r in run_ids]


def test_paused_in_one_process_resumed_in_another(location: str) -> None:
    pause_runs(location, ["r1"])

    store = open_location(location)
    try:
        info = store.get_run("r1")
        assert info.status == "paused" and info.stage == "s3"
        assert journal(store, "r1") == PAUSED_JOURNAL
        checkpoint = read_checkpoint(store, PIPELINE_ID, "r1")
        assert checkpoint.resume_at == "s3" and checkpoint.paused_at_stage_id == "s1"
        assert checkpoint.container_bundle is not None, "persist=True wrote no bundle"
        artifacts = decode_bundle(checkpoint.container_bundle, "r1")
        # (the bundle also keeps step results, spec section 9; not checked here)
        assert artifacts[PIPELINE_ID] == {"note": NOTE} and artifacts[""] == {"shared": SHARED}
        pauser = info.state["collected_by"]
    finally:
        store.close()

    [line] = run_worker("resume", location, "r1", json.dumps({"approved": True, "winner": "B"}))
    assert line["status"] == "succeeded"
    assert line["steps"] == [["s3", "label"]], "the resuming process ran more than stage s3"

    store = open_location(location)
    try:
        check_resumed_run(store, "r1", "B")
        state = store.get_run("r1").state
        assert state["approved"] is True
        assert state["collected_by"] == pauser != state["shipped_by"], state
    finally:
        store.close()


def check_race(
    location: str, run_ids: list[str], lines: list[dict[str, Any]], workers: int
) -> None:
    assert len(lines) == workers * len(run_ids), lines
    errors = [line for line in lines if line["outcome"] not in ("won", "lost")]
    assert not errors, errors
    winners = {r: [ln["worker"] for ln in lines if ln["run_id"] == r and ln["outcome"] == "won"]
               for r in run_ids}  # fmt: skip
    assert all(len(w) == 1 for w in winners.values()), f"winners per run: {winners}"
    for line in lines:
        if line["outcome"] == "won":
            assert line["status"] == "succeeded", line
            assert line["steps"] == [["s3", "label"]], line
    store = open_location(location)
    try:
        for run_id, [winner] in winners.items():
            check_resumed_run(store, run_id, winner)
    finally:
        store.close()


@pytest.mark.parametrize("workers", [2, 3])
def test_slow_path_resumes_race_across_processes(location: str, workers: int) -> None:
    run_ids = [f"run-{i:02d}" for i in range(RUNS)]
    pause_runs(location, run_ids)

    procs = [spawn("race", f"w{k}", location, *run_ids) for k in range(workers)]
    wait_ready(procs)
    release(procs)
    lines = [line for k, proc in enumerate(procs) for line in finish(proc, f"w{k}")]
    check_race(location, run_ids, lines, workers)
    wins = Counter(line["worker"] for line in lines if line["outcome"] == "won")
    print(f"{workers} workers, wins per worker: {dict(wins)}")


def test_fast_path_in_one_process_races_slow_path_in_another(location: str) -> None:
    run_ids = [f"run-{i:02d}" for i in range(RUNS)]
    # A pauses every run and holds it live in its Registry (window: an hour), then, on
    # "go", resumes each through the fast path; B resumes the same runs from the store,
    # in reverse order, so that each side reaches some runs first.
    live = spawn("live", "A", location, *run_ids)
    wait_ready([live])
    slow = spawn("race", "B", location, *reversed(run_ids))
    wait_ready([slow])
    release([live, slow])
    lines = finish(live, "A") + finish(slow, "B")
    check_race(location, run_ids, lines, 2)
    for line in lines:
        if line["outcome"] == "won":
            # A's wins came back as the very context it held (no store read, no decode)
            assert line["fast"] is (line["worker"] == "A"), line
    wins = Counter(line["worker"] for line in lines if line["outcome"] == "won")
    print(f"fast path vs slow path, wins: {dict(wins)}")
