"""Fault injection: SIGKILL a worker at random moments, and let the next worker recover.

tests/recover_worker.py runs a 12-stage pipeline under a Registry against one SQLite
file; if the run already exists it calls `registry.recover`. Each worker is killed after
a random delay (drawn over the measured duration of a whole run); the next one, an hour
ahead on its wall clock so the killed worker's lease has run out, takes the run over.
Steps append "stage step" to a side log before returning, so the test knows every step
execution. After each kill it checks: the file is intact, the run's committed stages are
a whole prefix (no torn stage), no step of a stage committed before the round ran again
during the round, and no step ran twice in one round. In the end every run succeeded
(no lost run) with each stage committed exactly once.
"""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from recover_worker import STAGES, STEPS  # tests/ is on sys.path (pytest's rootdir importing)
from test_crash import check_integrity, committed_prefix, wait_ready, worker_env

from stageline.stores import SqliteStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

WORKER = Path(__file__).with_name("recover_worker.py")
SEED = 20261124
ITERATIONS = 25
MIN_RECOVERED_MID_RUN = 3  # kills after which the next worker took over a half-done run


class Rounds:
    """Spawns workers for runs, each an hour ahead of the previous one."""

    def __init__(self, db: Path, logs: Path) -> None:
        self.db = db
        self.logs = logs
        self.count = itertools.count()

    def spawn(self, mode: str, arg: str = "", hour: int | None = None) -> subprocess.Popen[bytes]:
        """A worker in `mode` ("run", "orphans", "recover"), an hour after the last one
        (or `hour` hours ahead of real time: workers alive together share one clock)."""
        offset = (next(self.count) if hour is None else hour) * 3600.0
        return subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(self.db), str(self.logs), str(offset), arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=worker_env(),
        )

    def executions(self, run_id: str) -> list[tuple[int, int]]:
        log = self.logs / f"{run_id}.log"
        if not log.exists():
            return []
        return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


def snapshot(db: Path, run_id: str, where: str) -> tuple[str | None, int]:
    """(status, committed stages) of the run, after checking the file and the prefix."""
    check_integrity(db, where)
    store = SqliteStore(db)
    try:
        if not any(info.run_id == run_id for info in store.list_runs()):
            return None, 0
        info = store.get_run(run_id)
        m = committed_prefix(info.state, f"{where} ({info.status})")
        journal = store.read_events(run_id)
        successes = [e.stage_id for e in journal if e.name == "stage:success"]
        assert successes == [f"s{k}" for k in range(1, m + 1)], f"{where}: {successes}"
        seqs = [e.seq for e in journal]
        assert seqs == sorted(set(seqs)), f"{where}: seqs {seqs}"
        if info.status == "succeeded":
            assert m == STAGES, where
        else:
            assert info.status in ("pending", "running"), f"{where}: {info.status}"
            assert info.stage == f"s{m + 1}", f"{where}: at {info.stage} after {m} stages"
        return info.status, m
    finally:
        store.close()


def run_round(rounds: Rounds, run_id: str, delay: float | None, where: str) -> tuple[bool, bool]:
    """One worker for `run_id`, killed after `delay` (None: let it finish).

    Returns (the run succeeded, the worker took over a half-done run and moved it on).
    """
    status, before = snapshot(rounds.db, run_id, f"{where} before")
    seen = len(rounds.executions(run_id))
    proc = rounds.spawn("run", run_id)
    wait_ready(proc, where)
    if delay is not None:
        time.sleep(delay)  # the deliberate random kill moment
        proc.send_signal(signal.SIGKILL)  # a no-op if it already exited
    _, err = proc.communicate(timeout=120)
    killed = proc.returncode == -signal.SIGKILL
    assert killed or proc.returncode == 0, (
        f"{where}: worker exited {proc.returncode}: {err.decode(errors='replace')}"
    )
    new = rounds.executions(run_id)[seen:]
    again = sorted({k for k, _ in new if k <= before})
    assert not again, f"{where}: stages {again} committed before the round ran again"
    twice = [step for step, n in Counter(new).items() if n > 1]
    assert not twice, f"{where}: steps ran twice in one worker: {twice}"
    after_status, after = snapshot(rounds.db, run_id, f"{where} after")
    assert after >= before, f"{where}: committed stages went from {before} to {after}"
    if not killed:
        assert after_status == "succeeded", f"{where}: exited 0 but the run is {after_status}"
    took_over = status == "running" and 0 < before < after
    return after_status == "succeeded", took_over


def test_sigkill_then_recover_loses_no_run_and_reruns_no_committed_stage(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    rounds = Rounds(tmp_path / "recover.db", tmp_path)
    started = time.monotonic()

    durations = []
    for run_id in ("baseline-0", "baseline-1"):
        proc = rounds.spawn("run", run_id)
        wait_ready(proc, run_id)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=120)
        durations.append(time.monotonic() - t0)
        assert proc.returncode == 0, err.decode(errors="replace")
    duration = min(durations)

    width = 1.2 / ITERATIONS
    fractions = [rng.uniform(-0.1 + i * width, -0.1 + (i + 1) * width) for i in range(ITERATIONS)]
    rng.shuffle(fractions)
    victims = [f"victim-{n:03d}" for n in range(ITERATIONS + 1)]
    current = 0
    recovered_mid_run = 0
    for i, fraction in enumerate(fractions):
        run_id = victims[current]
        delay = max(0.0, fraction * duration)
        where = f"seed={SEED} iteration={i} run={run_id} delay={delay:.3f}s of {duration:.3f}s"
        finished, took_over = run_round(rounds, run_id, delay, where)
        recovered_mid_run += took_over
        current += finished

    finals = victims[: current + 1]
    for run_id in finals:  # every run that was started ends, recovered by a last worker
        where = f"seed={SEED} final run={run_id}"
        if snapshot(rounds.db, run_id, where)[0] != "succeeded":
            finished, took_over = run_round(rounds, run_id, None, where)
            assert finished, where
            recovered_mid_run += took_over

    store = SqliteStore(rounds.db)
    try:
        for run_id in finals:
            info = store.get_run(run_id)
            assert info.status == "succeeded" and committed_prefix(info.state, run_id) == STAGES
            runs = Counter(k for k, _ in rounds.executions(run_id))
            assert all(runs[k] >= STEPS for k in range(1, STAGES + 1)), runs
            journal = store.read_events(run_id)
            starts = [e.resumed for e in journal if e.name == "pipeline:start"]
            assert starts[0] is False and all(starts[1:]), f"{run_id}: {starts}"
    finally:
        store.close()
    summary = (
        f"seed={SEED} whole run={duration:.3f}s runs={len(finals)} "
        f"recovered mid-run={recovered_mid_run} elapsed={time.monotonic() - started:.1f}s"
    )
    print(summary)
    assert recovered_mid_run >= MIN_RECOVERED_MID_RUN, f"too few recoveries: {summary}"


def test_two_processes_racing_recover_take_each_orphan_once(tmp_path: Path) -> None:
    """A worker dies with ORPHANS runs mid-stage; two workers recover the file at once."""
    orphans = 4
    rounds = Rounds(tmp_path / "race.db", tmp_path)
    dying = rounds.spawn("orphans", str(orphans))
    wait_ready(dying, "orphans")
    assert dying.stdout is not None
    assert dying.stdout.readline() == b"blocked\n", dying.stderr.read() if dying.stderr else ""
    dying.send_signal(signal.SIGKILL)
    dying.communicate(timeout=30)

    racers = [rounds.spawn("recover", hour=1), rounds.spawn("recover", hour=1)]
    for n, proc in enumerate(racers):
        wait_ready(proc, f"racer {n}")
    for proc in racers:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    took: dict[int, list[str]] = {}
    for n, proc in enumerate(racers):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"racer {n}: {err.decode(errors='replace')}"
        took[n] = [line.split()[1] for line in out.decode().splitlines() if line[:4] == "took"]
    expected = [f"orphan-{n}" for n in range(orphans)]
    print(f"taken by each racer: {took}")
    assert sorted(took[0] + took[1]) == expected  # each orphan taken by exactly one racer

    store = SqliteStore(rounds.db)
    try:
        for run_id in expected:
            info = store.get_run(run_id)
            assert info.status == "succeeded" and committed_prefix(info.state, run_id) == STAGES
            runs = Counter(rounds.executions(run_id))
            assert all(runs[(1, j)] == 1 for j in range(STEPS)), runs  # committed by the dead
            assert runs[(2, 0)] == 2, runs  # stuck in the dead worker, then run again once
            assert all(runs[(k, j)] == 1 for k in range(3, STAGES + 1) for j in range(STEPS)), (
                runs
            )  # only one racer drove the run on
            starts = [e.resumed for e in store.read_events(run_id) if e.name == "pipeline:start"]
            assert starts == [False, True], starts
    finally:
        store.close()
