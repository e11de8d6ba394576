"""kill -9 while commits of many runs are grouped: no torn stage, no lost commit, no re-run.

tests/group_crash_worker.py runs RUNS runs of 10 one-step stages at once (so their stage
commits share transactions) and is killed with SIGKILL once KILL_AFTER steps have run.
Each step fsyncs "run stage" to a log before it returns, and each stage success (told
only once its commit is durable) is printed. Then, per run:

- the journal is whole: every committed stage has its stage:start and stage:success, and
  the committed stages are a prefix s1..sm; the state holds exactly those stages (no
  torn stage: a stage's patch, position and journal landed together or not at all);
- every commit the worker was told was durable is in the store (no lost commit);
- a second worker recovers every run to the end; no stage committed before the kill ran
  again, and no stage ran more than twice (once cut short by the kill, once after).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import drop_schema
from group_crash_worker import STAGES  # tests/ is on sys.path (pytest's rootdir importing)
from test_crash import wait_ready, worker_env

from stageline.stores import PostgresStore, SqliteStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("group_crash_worker.py")
RUNS = 50
KILL_AFTER = 180  # steps seen before the kill: mid-way through RUNS * STAGES = 500


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(what the worker opens, a function opening the same store here)."""
    if request.param == "sqlite":
        db = tmp_path / "group.db"
        yield str(db), lambda: SqliteStore(db)
        return
    dsn = request.getfixturevalue("pg_dsn")
    if not dsn.startswith(("postgresql://", "postgres://")):
        pytest.skip("the worker needs STAGELINE_TEST_PG_DSN as a URL")
    schema = f"stageline_gcrash_{uuid.uuid4().hex[:12]}"
    PostgresStore(dsn, schema=schema, min_size=0).close()
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    yield url, lambda: PostgresStore(dsn, schema=schema, min_size=0)
    drop_schema(dsn, schema)


def spawn(mode: str, where: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, where, str(log), str(RUNS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_env(),
    )


def kill_mid_way(proc: subprocess.Popen[bytes]) -> set[tuple[str, str]]:
    """Read the worker's lines until KILL_AFTER steps ran, SIGKILL it: the stages it was
    told were committed (durably) before the kill. Its commits were grouped."""
    assert proc.stdout is not None
    told: set[tuple[str, str]] = set()
    steps = largest = 0
    while steps < KILL_AFTER:
        line = proc.stdout.readline().decode()
        assert line, f"the worker ended early: {proc.communicate(timeout=30)[1].decode()}"
        if line == "step\n":
            steps += 1
        elif line.startswith("committed "):
            _, run_id, stage, group = line.split()
            told.add((run_id, stage))
            largest = max(largest, int(group))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the worker finished before the kill"
    assert largest > 1, "no two commits shared a transaction before the kill"
    return told


def committed_stages(store: Any, run_id: str) -> list[str]:
    """The run's committed stages, after checking journal and state agree (not torn)."""
    info = store.get_run(run_id)
    journal = store.read_events(run_id)
    started = [e.stage_id for e in journal if e.name == "stage:start"]
    succeeded = [e.stage_id for e in journal if e.name == "stage:success"]
    m = len(succeeded)
    assert succeeded == [f"s{k}" for k in range(1, m + 1)], f"{run_id}: {succeeded}"
    assert set(succeeded) <= set(started), f"{run_id}: a stage committed without its start"
    state = {key: value for key, value in info.state.items() if key != "count"}
    assert state == {f"s{k}": True for k in range(1, m + 1)}, f"{run_id} torn: {info.state}"
    assert info.state.get("count", 0) == m, f"{run_id}: {info.state}"
    if info.status != "succeeded":
        assert info.stage == f"s{m + 1}", f"{run_id}: at {info.stage} after {m} stages"
    return succeeded


def executions(log: Path) -> Counter[tuple[str, str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(tuple(line.split()) for line in lines)  # type: ignore[misc]


def test_sigkill_mid_group_commits_tears_loses_and_reruns_nothing(
    target: tuple[str, Any], tmp_path: Path
) -> None:
    where, open_here = target
    log = tmp_path / "steps.log"
    proc = spawn("run", where, log)
    wait_ready(proc, "run worker")
    told = kill_mid_way(proc)
    if where.endswith(".db"):
        raw = sqlite3.connect(where)
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        raw.close()
    before = executions(log)
    store = open_here()
    try:
        committed = {
            (run_id, stage)
            for info in store.list_runs()
            for run_id in [info.run_id]
            for stage in committed_stages(store, run_id)
        }
        grouped = store.group_stats()  # this store's own: zero, it has committed nothing
    finally:
        store.close()
    assert grouped["commits"] == 0
    assert told <= committed, f"commits told durable but lost: {sorted(told - committed)}"
    assert 0 < len(committed) < RUNS * STAGES
    assert all(before[key] == 1 for key in committed), "a committed stage never ran"
    assert max(before.values()) == 1, "a stage ran twice before the kill"

    recover = spawn("recover", where, log)
    wait_ready(recover, "recovering worker")
    _, err = recover.communicate(timeout=240)
    assert recover.returncode == 0, err.decode(errors="replace")
    after = executions(log) - before
    again = sorted(key for key in after if key in committed)
    assert not again, f"stages committed before the kill ran again: {again}"
    store = open_here()
    try:
        for n in range(RUNS):
            assert store.get_run(f"g{n}").status == "succeeded"
            assert len(committed_stages(store, f"g{n}")) == STAGES
    finally:
        store.close()
    total = before + after
    assert max(total.values()) <= 2 and len(total) == RUNS * STAGES
