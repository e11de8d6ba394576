"""Fault injection: SIGKILL a process running a pipeline at a random moment, many times.

Spec section 5: "A crash at any moment leaves either the stage wholly committed or not at
all." tests/crash_worker.py runs a 30-stage pipeline (3 concurrent steps a stage) against
one shared SQLite file; this test kills it after a random delay drawn over the measured
duration of a whole run (timed from the worker's "ready" line, printed after its imports
and just before it opens the store), then opens the file and checks, for every run it
holds, that the file is intact and that state, journal, position and status all agree on
a prefix of wholly committed stages.
"""

from __future__ import annotations

import itertools
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from crash_worker import STAGES, STEPS  # tests/ is on sys.path (pytest's rootdir importing)
from invariants import check_run as check_invariants

import stageline
from stageline.stores import SqliteStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("crash_worker.py")
SEED = 20240917
ITERATIONS = 25
MIN_MID_RUN = 5  # kills that must land after the run started and before it ended

ABSENT, PENDING, MID_RUN, FINISHED = "absent", "pending", "mid-run", "finished"


def worker_env() -> dict[str, str]:
    """The worker imports the same stageline as this process (a source checkout wins over
    a strict editable install, whose link tree lacks modules added since it was made)."""
    root = str(Path(stageline.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else os.pathsep.join((root, path))}


def spawn(db: Path, run_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(db), run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_env(),
    )


def wait_ready(proc: subprocess.Popen[bytes], where: str) -> None:
    """Block (at most 60 s) until the worker says it is about to open the store."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 60.0)
    line = proc.stdout.readline() if readable else b""
    if line != b"ready\n":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"{where}: worker not ready ({line!r}): {err.decode(errors='replace')}")


def step_patch(k: int, j: int) -> dict:
    return {f"s{k}": {f"j{j}": k}, "count": k}


def committed_prefix(state: dict, where: str) -> int:
    """m such that stages 1..m are in state, each whole, and nothing else is."""
    stage_keys = {key for key in state if key != "count"}
    m = len(stage_keys)
    assert stage_keys == {f"s{k}" for k in range(1, m + 1)}, (
        f"{where}: stages in state are not a prefix 1..{m}: {sorted(stage_keys)}"
    )
    for k in range(1, m + 1):
        assert state[f"s{k}"] == {f"j{j}": k for j in range(STEPS)}, (
            f"{where}: stage s{k} is torn: {state[f's{k}']!r}"
        )
    if m == 0:
        assert "count" not in state, f"{where}: counter without any stage: {state!r}"
    else:
        assert state.get("count") == m, f"{where}: counter {state.get('count')!r} != {m}"
    return m


def check_run(store: SqliteStore, run_id: str, where: str) -> tuple[str, int]:
    """Check one run's invariants; return its status and its number of committed stages."""
    info = store.get_run(run_id)
    where = f"{where} run {run_id} ({info.status})"
    check_invariants(store, run_id)  # the generic ones (tests/invariants.py), then these
    assert info.status in ("pending", "running", "succeeded"), where
    m = committed_prefix(info.state, where)

    journal = store.read_events(run_id)
    seqs = [e.seq for e in journal]
    assert all(a < b for a, b in itertools.pairwise(seqs)), f"{where}: seqs {seqs}"
    expected = [] if info.status == "pending" else ["pipeline:start"]
    expected += ["stage:start", "stage:success"] * m
    if info.status == "succeeded":
        expected.append("pipeline:success")
    assert [e.name for e in journal] == expected, f"{where}: journal {[e.name for e in journal]}"
    successes = [e for e in journal if e.name == "stage:success"]
    assert [e.stage_id for e in successes] == [f"s{k}" for k in range(1, m + 1)], where
    for k, event in enumerate(successes, start=1):
        assert event.results == {f"j{j}": step_patch(k, j) for j in range(STEPS)}, (
            f"{where}: results of s{k}: {event.results!r}"
        )

    record = store.load_run(run_id)
    assert record.stage_runs == m, f"{where}: stage_runs {record.stage_runs} != {m}"
    assert record.last_seq >= (seqs[-1] if seqs else 0), f"{where}: last_seq {record.last_seq}"
    if info.status == "succeeded":
        assert m == STAGES and info.stage is None, f"{where}: m={m}, stage={info.stage!r}"
    else:
        assert m < STAGES, f"{where}: all stages committed but the run did not succeed"
        assert info.stage == f"s{m + 1}", f"{where}: position {info.stage!r} after {m} stages"
    return info.status, m


def check_integrity(db: Path, where: str) -> None:
    """SQLite's own check of the whole file."""
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)], where
    finally:
        raw.close()


def check_file(db: Path, where: str) -> dict[str, tuple[str, int]]:
    """Check the whole file; return {run_id: (status, committed stages)}."""
    check_integrity(db, where)
    store = SqliteStore(db)
    try:
        return {info.run_id: check_run(store, info.run_id, where) for info in store.list_runs()}
    finally:
        store.close()


def check_outcomes(runs: dict[str, tuple[str, int]], outcomes: dict[str, str], where: str) -> None:
    """Killed runs stay where the kill left them (resumable); finished ones succeeded."""
    expected_status = {PENDING: "pending", MID_RUN: "running", FINISHED: "succeeded"}
    for run_id, outcome in outcomes.items():
        if outcome == ABSENT:
            assert run_id not in runs, f"{where}: {run_id} appeared after its process died"
            continue
        status, m = runs[run_id]
        assert status == expected_status[outcome], f"{where}: {outcome} {run_id} is {status}"
        if outcome == FINISHED:
            assert m == STAGES, f"{where}: {run_id} succeeded with {m} stages"


def test_sigkill_at_any_moment_leaves_whole_stages(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    db = tmp_path / "crash.db"
    started = time.monotonic()

    # Runs to the end, to learn how long a run takes from "ready" to exit. The fastest of
    # two, so that one slow run does not push most kills past the end.
    durations = []
    outcomes: dict[str, str] = {}
    for run_id in ("baseline-0", "baseline-1"):
        proc = spawn(db, run_id)
        wait_ready(proc, run_id)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        durations.append(time.monotonic() - t0)
        assert proc.returncode == 0, f"{run_id} failed: {err.decode(errors='replace')}"
        outcomes[run_id] = FINISHED
    duration = min(durations)
    assert check_file(db, "baseline") == dict.fromkeys(outcomes, ("succeeded", STAGES))

    # Kill moments as fractions of a run, one drawn in each of ITERATIONS equal slices of
    # [-0.1, 1.1] (shuffled), so every part of a run is hit whatever the seed. Fractions
    # below zero kill at once: while the store opens or the run is created.
    width = 1.2 / ITERATIONS
    fractions = [rng.uniform(-0.1 + i * width, -0.1 + (i + 1) * width) for i in range(ITERATIONS)]
    rng.shuffle(fractions)
    for i, fraction in enumerate(fractions):
        run_id = f"run-{i:03d}"
        delay = max(0.0, fraction * duration)
        where = f"seed={SEED} iteration={i} delay={delay:.3f}s of {duration:.3f}s"
        proc = spawn(db, run_id)
        wait_ready(proc, where)
        time.sleep(delay)  # the deliberate random kill moment
        proc.send_signal(signal.SIGKILL)  # a no-op if it already exited
        _, err = proc.communicate(timeout=30)
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, (
            f"{where}: worker exited {proc.returncode}: {err.decode(errors='replace')}"
        )

        runs = check_file(db, where)
        assert set(runs) - {run_id} == {r for r, o in outcomes.items() if o != ABSENT}, (
            f"{where}: runs {sorted(runs)}"
        )
        if not killed:
            assert runs[run_id] == ("succeeded", STAGES), f"{where}: {runs[run_id]}"
            outcomes[run_id] = FINISHED
        elif run_id not in runs:
            outcomes[run_id] = ABSENT  # killed before the run was created
        else:
            status, _ = runs[run_id]
            outcomes[run_id] = {"pending": PENDING, "running": MID_RUN}.get(status, FINISHED)
        check_outcomes(runs, outcomes, where)  # earlier runs are untouched by later crashes

    final = check_file(db, f"seed={SEED} final")
    check_outcomes(final, outcomes, f"seed={SEED} final")
    mid_run = sorted(final[r][1] for r, o in outcomes.items() if o == MID_RUN)
    summary = (
        f"seed={SEED} whole run={duration:.3f}s outcomes={dict(Counter(outcomes.values()))} "
        f"stages committed when killed mid-run={mid_run} "
        f"elapsed={time.monotonic() - started:.1f}s"
    )
    print(summary)
    assert len(mid_run) >= MIN_MID_RUN, f"too few kills landed mid-run: {summary}"
    assert any(m > 0 for m in mid_run), f"no kill landed after a stage commit: {summary}"


PG_ITERATIONS = 10


def test_sigkill_on_postgres_leaves_whole_stages_and_recovery_finishes(pg_url: str) -> None:
    """Issue 9 on PostgreSQL: kill -9 at random moments of runs on one schema, check
    every run (no torn stage, journal = state = position), then recover the killed ones:
    each finishes, and no committed stage ran twice (the journal has each stage once)."""
    from crash_worker import build_pipeline

    from stageline import PipelineFactory, Registry
    from stageline.stores.url import open_store

    rng = random.Random(SEED + 1)
    baseline = spawn_url(pg_url, "pg-baseline")
    wait_ready(baseline, "pg-baseline")
    t0 = time.monotonic()
    _, err = baseline.communicate(timeout=60)
    duration = time.monotonic() - t0
    assert baseline.returncode == 0, err.decode(errors="replace")
    killed: list[str] = []
    store = open_store(pg_url)
    try:
        where = f"seed={SEED + 1} postgres"
        mid_run: list[str] = []
        # PG_ITERATIONS kills, more (bounded) until two landed mid-run: load varies
        while len(killed) < PG_ITERATIONS or (len(mid_run) < 2 and len(killed) < 30):
            run_id = f"pg-run-{len(killed):02d}"
            delay = rng.uniform(0.0, duration)
            proc = spawn_url(pg_url, run_id)
            wait_ready(proc, run_id)
            time.sleep(delay)  # the deliberate random kill moment
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            killed.append(run_id)
            runs = {i.run_id: check_run(store, i.run_id, where) for i in store.list_runs()}
            mid_run = [r for r, (status, _) in runs.items() if status == "running"]
        assert len(mid_run) >= 2, f"{where}: too few kills landed mid-run: {runs}"
        with Registry() as registry:
            factory = PipelineFactory(build_pipeline(), store=store)
            for context in registry.recover(factory):
                assert context.wait(timeout=60).status == "succeeded"
        for run_id in mid_run:
            info = store.get_run(run_id)
            assert info.status == "succeeded" and committed_prefix(info.state, where) == STAGES
            check_invariants(store, run_id)
            journal = store.read_events(run_id)
            committed = [e.stage_id for e in journal if e.name == "stage:success"]
            assert committed == [f"s{k}" for k in range(1, STAGES + 1)], (where, committed)
            assert [e.name for e in journal].count("pipeline:start") == 2, where  # + recovery
        print(f"{where}: run={duration:.3f}s killed mid-run={len(mid_run)} of {len(killed)}")
    finally:
        store.close()


def spawn_url(url: str, run_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_env(),
    )
