"""kill -9 during pause export, resume and retry (issue 9), on SQLite and on PostgreSQL.

tests/test_crash.py kills stage commits of plain runs, tests/test_children_processes.py
runs with children. Here a tests/fault_worker.py subprocess pauses runs (exporting each
bundle at once), resumes paused runs, or retries failed runs, one after another, and is
killed after a random number of them plus a random delay. Then, reading the store only
(tests/invariants.py): no torn stage, no lost run, journal consistent with state, each
run where a crash may leave it; and after every run is finished from where the crash
left it (resume, retry, recover), no committed stage ran twice (each stage's counter is 1).

Each round uses a fresh store: a SQLite file, or a PostgreSQL schema of this test (a store
URL `postgresql://...?schema=...`, dropped after the test; skipped like every PostgreSQL
test when no server answers, unless STAGELINE_REQUIRE_PG=1).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fault_worker
import pytest
from conftest import drop_schema
from invariants import check_store

import stageline
from stageline import ManualClock, PipelineFactory, Registry, Store
from stageline.stores import SqliteStore
from stageline.stores.url import open_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WORKER = Path(__file__).with_name("fault_worker.py")
SEED = 20251124
ITERATIONS = 4  # per mode
MAX_ITERATIONS = 12
RUNS = 5  # per iteration
COUNTERS = {"s1": {"n": 1}, "s2": {"n": 1}, "s3": {"n": 1}}


def worker_env() -> dict[str, str]:
    root = str(Path(stageline.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else os.pathsep.join((root, path))}


STORE_KINDS = ["sqlite", "postgres"]


@pytest.fixture(params=STORE_KINDS)
def new_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Make a fresh, empty store location per call, as the workers take it: a SQLite file's
    path, or a store URL on a new PostgreSQL schema (every schema dropped after the test)."""
    schemas: list[str] = []
    if request.param == "sqlite":
        yield lambda name: str(tmp_path / f"{name}.db")
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    if not dsn.startswith(("postgresql://", "postgres://")):
        pytest.skip(f"the workers take a store URL, STAGELINE_TEST_PG_DSN is {dsn!r}")

    def new(name: str) -> str:
        schemas.append(f"stageline_t_{uuid.uuid4().hex[:12]}")
        return f"{dsn}{'&' if '?' in dsn else '?'}schema={schemas[-1]}"

    try:
        yield new
    finally:
        for schema in schemas:
            drop_schema(dsn, schema)


def open_location(location: str) -> Store:
    """The store at a location `new_location` made (a SQLite path or a store URL)."""
    return open_store(location) if "://" in location else SqliteStore(location)


def settle(location: str, timeout: float = 30.0) -> None:
    """Return once no transaction of a killed worker holds a lock in the store.

    SQLite releases a dead process's locks with its file descriptors. A PostgreSQL server
    ends a dead client's transaction only when it notices the closed connection, which
    may be a moment after the kill; until then the run rows it locked are skipped by
    claims (`FOR UPDATE SKIP LOCKED`), so a recovery right away could pass a run over.
    Taking (and at once releasing) every table of the schema in ACCESS EXCLUSIVE mode
    waits for every other transaction on them to end.
    """
    if "://" not in location:
        return
    import psycopg
    from psycopg import sql

    parts = urlsplit(location)
    query = parse_qsl(parts.query)
    schema = dict(query)["schema"]
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
    with psycopg.connect(dsn) as conn:  # one transaction, committed on leaving the block
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(timeout * 1000)}",))
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        names = sql.SQL(", ").join(sql.Identifier(schema, name) for (name,) in tables)
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(names))


def readline(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> bytes:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if readable else b""


def kill_after(mode: str, location: str, run_ids: list[str], rng: random.Random) -> list[str]:
    """Run the worker and kill it after a random number of runs and a random delay;
    return the runs it reported done."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), mode, location, *run_ids],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_env(),
    )
    try:
        assert readline(proc) == b"ready\n", proc.stderr.read() if proc.poll() else "no ready"
        done = []
        moments = rng.randrange(len(run_ids)) + 1  # kill around the n-th run's moment
        while moments:
            line = readline(proc)
            if line.startswith(b"done "):
                done.append(line.split()[1].decode())
            else:
                assert line == f"at {mode}\n".encode(), (
                    line,
                    proc.stderr.read() if proc.poll() else "",
                )
                moments -= 1
        time.sleep(rng.uniform(0.0, 0.012))  # the deliberate random kill moment
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (-signal.SIGKILL, 0), err.decode(errors="replace")
        settle(location)
        return done
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def finish_all(store: Store, run_ids: list[str]) -> dict[str, str]:
    """Carry every run on from where the crash left it; return how each was continued."""
    how: dict[str, str] = {}
    # a clock an hour ahead: the dead worker's leases have run out
    clock = ManualClock(start=time.monotonic(), wall_start=time.time() + 3600)
    with Registry(clock=clock, default_pause_timeout=0) as registry:
        factory = PipelineFactory(
            fault_worker.build_pipeline(),
            store=store,
            registry=registry,
            initial_state={"mode": "pause"},
        )
        contexts = {c.run_id: c for c in registry.recover(factory)}
        for run_id in run_ids:
            status = store.get_run(run_id).status
            if run_id in contexts:
                how[run_id] = "recovered"
                result = contexts[run_id].wait(30)
            elif status == "paused":
                how[run_id] = "resumed"
                result = factory.resume(run_id).run(timeout=30)
            elif status == "failed":
                how[run_id] = "retried"
                result = registry.retry(run_id, factory).wait(30)
            elif status == "pending":
                # Killed between prepare() and its first commit: it never started, and no
                # API continues it (docs/guarantees.md). Prepare the work again instead.
                how[run_id] = "pending, prepared again"
                result = factory.prepare(run_id=f"{run_id}-again").run(timeout=30)
            else:
                how[run_id] = status
                continue
            assert result.status in ("succeeded", "paused"), (run_id, result.status, result.error)
            if result.status == "paused":  # a run recovered before s1 committed pauses again
                how[run_id] += "+resumed"
                result = factory.resume(result.run_id).run(timeout=30)
                assert result.status == "succeeded", (run_id, result.status, result.error)
    return how


def check_after_crash(store: Store, run_ids: list[str], allowed: dict[str, set[str]]) -> None:
    summaries = check_store(store, initial={"mode": None}, ignore=("mode", "resumed"))
    present = set(summaries)
    for run_id in run_ids:
        if run_id not in present:
            assert "absent" in allowed, f"run {run_id} lost"
            continue
        status = summaries[run_id].status
        assert status in allowed, f"{run_id} is {status} after the kill"


def check_finished(store: Store, run_ids: list[str]) -> None:
    """Every run succeeded, each stage committed once; the store's invariants hold."""
    for run_id in run_ids:
        info = store.get_run(run_id)
        assert info.status == "succeeded", (run_id, info.status)
        counters = {k: info.state[k] for k in COUNTERS}
        assert counters == COUNTERS, f"{run_id}: a committed stage ran twice: {counters}"
    check_store(store, initial={"mode": None}, ignore=("mode", "resumed"))


def make_runs(store: Store, mode: str, run_ids: list[str]) -> None:
    """Paused runs ("resume") or runs failed at s2 ("retry"), made in this process."""
    factory = PipelineFactory(
        fault_worker.build_pipeline(), store=store, initial_state={"mode": mode}
    )
    fault_worker.FAIL = mode == "retry"
    try:
        for run_id in run_ids:
            result = factory.prepare(run_id=run_id).run(timeout=30)
            assert result.status == ("failed" if mode == "retry" else "paused"), result
    finally:
        fault_worker.FAIL = False


ALLOWED = {
    # where a kill may leave a run, by what the worker was doing
    "pause": {"absent", "pending", "running", "paused"},
    "resume": {"paused", "running", "succeeded"},
    "retry": {"failed", "running", "succeeded"},
}


@pytest.mark.parametrize("mode", ["pause", "resume", "retry"])
def test_kill_during(mode: str, new_location: Callable[[str], str]) -> None:
    rng = random.Random(f"{SEED}-{mode}")
    outcomes: dict[str, int] = {}
    caught = 0
    iteration = -1
    # at least ITERATIONS rounds, more (bounded) until a kill lands mid-way: how long a
    # resume or retry takes after its announcement varies with the machine's load
    while iteration + 1 < ITERATIONS or (not caught and iteration + 1 < MAX_ITERATIONS):
        iteration += 1
        location = new_location(f"{mode}-{iteration}")
        run_ids = [f"{mode}-{iteration}-{i}" for i in range(RUNS)]
        store = open_location(location)
        try:
            if mode != "pause":
                make_runs(store, mode, run_ids)
            done = kill_after(mode, location, run_ids, rng)
            check_after_crash(store, run_ids, ALLOWED[mode])
            caught += sum(1 for r in run_ids if _caught(store, r, mode))
            for run_id in done:  # what the worker reported done is durable
                expected = "paused" if mode == "pause" else "succeeded"
                assert store.get_run(run_id).status == expected, run_id
            if mode == "pause":  # a run whose export finished carries its whole bundle
                for run_id in done:
                    assert store.get_run(run_id).checkpoint.container_bundle is not None
            survivors = [r for r in run_ids if mode != "pause" or _exists(store, r)]
            how = finish_all(store, survivors)
            for value in how.values():
                outcomes[value] = outcomes.get(value, 0) + 1
            finished = [r for r in survivors if not how[r].startswith("pending")]
            finished += [f"{r}-again" for r in survivors if how[r].startswith("pending")]
            check_finished(store, finished)
            assert len(store.list_runs(status="pending")) == len(survivors) - len(
                [r for r in survivors if not how[r].startswith("pending")]
            )
        finally:
            store.close()
    print(f"seed={SEED} mode={mode} continued: {outcomes}; caught mid-way: {caught}")
    assert caught, f"no kill landed mid-way through a {mode}: {outcomes}"


def _caught(store: Store, run_id: str, mode: str) -> bool:
    """Did the kill land mid-way through this run's pause (before its export finished),
    resume or retry (claimed, not finished)?"""
    if not _exists(store, run_id):
        return False
    info = store.get_run(run_id)
    if mode == "pause":
        return info.status != "paused" or info.checkpoint.container_bundle is None
    return info.status == "running"


def _exists(store: Store, run_id: str) -> bool:
    return any(info.run_id == run_id for info in store.list_runs())
