"""Admission across real `stageline serve` processes on one store (SPEC section 20).

Two daemons on SQLite, three on PostgreSQL, serve a pipeline with `Limit("api", 5)`.
Each step appends a "start" line when it begins and an "end" line when it returns to a
file shared by every process (one write a line, append mode), with `time.time()` and its
pid; from those records the test checks that at no instant more than 5 steps were in
flight, that each run ran its step exactly once and ended succeeded once, and that
queued runs were admitted highest priority first, then oldest (the order the store
keeps across every daemon). A `hold` run blocks in its step until the test creates the
"release" file. Tests wait on daemons' log lines (`Daemon.expect`, `expect_each`) or
poll the store (`wait_for_status`, `limit_usage`), never on a sleep.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Daemon, cli_env, expect_each  # tests/ is on sys.path

from stageline.core.mailbox import Request
from stageline.stores import SqliteStore
from stageline.stores.url import open_store
from stageline.testing import wait_for_status

pytestmark = pytest.mark.timeout(120)

LIMIT = 5
RUNS = 300
"""Queued runs in the order test (300 take ~2-4 s to drain through 5 slots of 20 ms)."""

APP = """
import os
import time
from pathlib import Path

from stageline import Limit, Pipeline, Stage, Step

HERE = Path(__file__).parent
LOG = HERE / "steps.log"


def record(*fields):
    with open(LOG, "a") as log:  # one write of one line: appends do not interleave
        log.write(" ".join(map(str, fields)) + "\\n")


def call(state, ctx):
    began = time.time()
    record("start", ctx.run_id, f"{began:.6f}", os.getpid())
    if state.get("hold"):
        while not (HERE / "release").exists():
            if ctx.aborted.wait(0.01):
                break
    else:
        time.sleep(0.02)  # the partner API's call
    record("end", ctx.run_id, f"{began:.6f}", f"{time.time():.6f}", os.getpid())
    return {"called": True}


calls = Pipeline("calls", [Stage("call", 1, steps=[Step("call", call)])],
                 limits=[Limit("api", 5)])
rated = Pipeline("rated", [Stage("call", 1, steps=[Step("call", lambda state, ctx: None)])],
                 limits=[Limit("partner", 100, rate=(10, 1.0))])
app = [calls, rated]
"""


class Steps:
    """The steps' records: each run's starts and ends, with their times and pids."""

    def __init__(self, path: Path) -> None:
        self.starts: dict[str, list[tuple[float, int]]] = {}
        self.ends: dict[str, list[tuple[float, float, int]]] = {}
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            fields = line.split()
            if fields[0] == "start":
                self.starts.setdefault(fields[1], []).append((float(fields[2]), int(fields[3])))
            else:
                began, ended, pid = float(fields[2]), float(fields[3]), int(fields[4])
                self.ends.setdefault(fields[1], []).append((began, ended, pid))

    def intervals(self, killed: dict[int, float]) -> list[tuple[float, float]]:
        """Every step in flight, as (start, end): a step of a killed process ends when
        the test saw the process dead (`killed`: pid -> time), the latest it could."""
        spans = [(began, ended) for ends in self.ends.values() for began, ended, _ in ends]
        for run_id, starts in self.starts.items():
            finished = {(began, pid) for began, _, pid in self.ends.get(run_id, [])}
            for began, pid in starts:
                if (began, pid) not in finished:
                    assert pid in killed, f"run {run_id}'s step in live process {pid} never ended"
                    spans.append((began, killed[pid]))
        return spans


def most_in_flight(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start is
    taken first: a slot frees when its step has returned and the stage committed)."""
    events = sorted([(began, 1) for began, _ in spans] + [(ended, -1) for _, ended in spans])
    inside = peak = 0
    for _, change in events:
        inside += change
        peak = max(peak, inside)
    return peak


@pytest.fixture(params=[("sqlite", 2), ("postgres", 3)], ids=["sqlite", "postgres"])
def fleet(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, Callable[..., Daemon], int]]:
    """The store, a way to start a daemon on it, and how many daemons the test runs."""
    kind, count = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        if not hasattr(SqliteStore, "admit"):
            pytest.skip("SqliteStore has no admission support yet")
    else:
        url = request.getfixturevalue("pg_url")
    (tmp_path / "adm.py").write_text(APP)
    env = cli_env(url, tmp_path)
    store = open_store(url, create=True)
    if not hasattr(store, "admit"):
        pytest.skip(f"{type(store).__name__} has no admission support yet")
    started: list[Daemon] = []

    def serve(*args: str) -> Daemon:
        daemon = Daemon("adm:app", env, tmp_path, "--log-format", "json", *args)
        started.append(daemon)
        daemon.expect("daemon:ready")
        return daemon

    try:
        yield store, serve, count
        (tmp_path / "release").touch()  # no step stays blocked while the daemons stop
        for daemon in started:
            if daemon.proc.poll() is None:
                assert daemon.signal(signal.SIGTERM) == 0
    finally:
        for daemon in started:
            daemon.stop()
        store.close()


def post_starts(store: Any, runs: list[tuple[str, int, bool]]) -> None:
    """A start request for each (run id, priority, hold), as `stageline start` posts it."""
    for run_id, priority, hold in runs:
        args: dict[str, Any] = {"entry": None, "state": {"hold": True} if hold else None}
        if priority:
            args["priority"] = priority
        request = Request(str(uuid.uuid4()), "start", run_id, time.time(), "calls", args)
        store.post_request(request)


def usage(store: Any) -> dict[str, int]:
    rows = [row for row in store.limit_usage(time.time()) if row["limit"] == "api"]
    return {"running": rows[0]["running"], "queued": rows[0]["queued"]} if rows else {}


def poll(done: Callable[[], bool], timeout: float, failure: Callable[[], str]) -> None:
    """Poll a store other processes write until `done()`; AssertionError(`failure()`)
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(failure())
        time.sleep(delay)  # polling a store other processes write: a backoff, not a wait
        delay = min(delay * 2, 0.05)


def wait_for_usage(store: Any, timeout: float = 60.0, **expected: int) -> None:
    """Poll the store's limit usage until it shows `expected` (runs driven elsewhere)."""
    poll(lambda: usage(store) == expected, timeout,
         lambda: f"limit usage {usage(store)} never became {expected}")  # fmt: skip


def queue_key(info: Any) -> tuple[int, float, str]:
    return (-info.priority, info.created_at.timestamp(), info.run_id)


def test_the_limit_and_the_queue_order_hold_across_daemons(fleet: Any, tmp_path: Path) -> None:
    store, serve, count = fleet
    daemons = [serve() for _ in range(count)]
    holders = [(f"hold-{i}", 0, True) for i in range(LIMIT)]
    post_starts(store, holders)
    wait_for_usage(store, running=LIMIT, queued=0)  # the 5 slots are taken and stay taken
    runs = [(f"r{i:03d}", (2 if i % 10 == 0 else 1 if i % 3 == 0 else 0), False)
            for i in range(RUNS)]  # fmt: skip
    post_starts(store, runs)
    expect_each(daemons, "request:done", [run_id for run_id, _, _ in holders + runs], timeout=60)
    wait_for_usage(store, running=LIMIT, queued=RUNS)
    (tmp_path / "release").touch()

    infos = {run_id: wait_for_status(store, run_id, "succeeded", timeout=60)
             for run_id, _, _ in holders + runs}  # fmt: skip
    steps = Steps(tmp_path / "steps.log")
    assert {run_id: len(ends) for run_id, ends in steps.ends.items()} == dict.fromkeys(infos, 1)
    assert {run_id: len(starts) for run_id, starts in steps.starts.items()} == dict.fromkeys(
        infos, 1
    )
    assert most_in_flight(steps.intervals({})) == LIMIT
    assert usage(store) == {}
    pids = {pid for ends in steps.ends.values() for _, _, pid in ends}
    assert pids <= {daemon.proc.pid for daemon in daemons}

    # Admitted in queue order: priority, then age, then id, whichever daemon held them.
    in_line = sorted((infos[run_id] for run_id, _, _ in runs), key=queue_key)
    started = {run_id: steps.starts[run_id][0][0] for run_id, _, _ in runs}
    low = [info.run_id for info in in_line if info.priority == 0]
    high = [info.run_id for info in in_line if info.priority == 2]
    assert max(started[run_id] for run_id in high) < max(started[run_id] for run_id in low)
    assert out_of_order(in_line, started) == []


def out_of_order(in_line: list[Any], started: dict[str, float]) -> list[tuple[str, str]]:
    """Pairs of runs that started in the wrong order by more than the jitter of starting:
    the store admits strictly in line, but a step begins a little after its admission
    (another thread, another process), so runs admitted close together (fewer than
    2 x LIMIT apart in line, or within one 0.05 s admission pass) may start swapped."""
    wrong = []
    for i, first in enumerate(in_line):
        for second in in_line[i + 2 * LIMIT :]:
            if started[second.run_id] < started[first.run_id] - 0.05:
                wrong.append((first.run_id, second.run_id))
    return wrong


def test_a_killed_daemons_slots_free_when_its_lease_runs_out(fleet: Any, tmp_path: Path) -> None:
    store, serve, count = fleet
    doomed = serve("--lease-ttl", "1")
    holders = [(f"hold-{i}", 0, True) for i in range(LIMIT)]
    post_starts(store, holders)
    expect_each([doomed], "request:done", [run_id for run_id, _, _ in holders])
    wait_for_usage(store, running=LIMIT, queued=0)
    survivors = [serve("--lease-ttl", "1") for _ in range(count - 1)]
    quick = [(f"q{i:02d}", i % 2, False) for i in range(20)]
    post_starts(store, quick)
    expect_each([doomed, *survivors], "request:done", [run_id for run_id, _, _ in quick])
    wait_for_usage(store, running=LIMIT, queued=len(quick))  # all wait: the 5 are held

    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(timeout=30)
    killed_at = time.time()
    (tmp_path / "release").touch()  # held runs, once recovered, finish at once

    infos = {run_id: wait_for_status(store, run_id, "succeeded", timeout=60)
             for run_id, _, _ in holders + quick}  # fmt: skip
    assert len(infos) == LIMIT + len(quick)
    steps = Steps(tmp_path / "steps.log")
    survivor_pids = {daemon.proc.pid for daemon in survivors}
    for run_id, _, _ in holders:  # begun on the killed daemon, ended on a survivor once
        (_, first), (_, again) = steps.starts[run_id]  # its stage was never committed
        assert first == doomed.proc.pid and again in survivor_pids
        [(_, _, pid)] = steps.ends[run_id]
        assert pid in survivor_pids
    for run_id, _, _ in quick:  # exactly once, on a survivor
        assert len(steps.starts[run_id]) == 1
        [(began, _, pid)] = steps.ends[run_id]
        assert pid in survivor_pids and began > killed_at
    assert most_in_flight(steps.intervals({doomed.proc.pid: killed_at})) <= LIMIT
    assert usage(store) == {}


def test_a_rate_holds_across_daemons_in_real_time(fleet: Any, tmp_path: Path) -> None:
    """rate=(10, 1.0): no sliding one-second window holds more than 10 admissions, read
    from the journal (each admission commits the run's pipeline:start at its time)."""
    store, serve, count = fleet
    for _ in range(count):
        serve("--lease-ttl", "5")
    run_ids = [f"rated-{n:03d}" for n in range(35)]
    for run_id in run_ids:
        request = Request(str(uuid.uuid4()), "start", run_id, time.time(), "rated",
                          {"entry": None, "state": None})  # fmt: skip
        store.post_request(request)
    poll(
        lambda: len(store.list_runs(status="succeeded", pipeline_id="rated")) == len(run_ids),
        60.0,
        lambda: "the rated runs did not all succeed in 60 s",
    )
    starts = sorted(
        event.ts for run_id in run_ids for event in store.read_events(run_id)
        if event.name == "pipeline:start"
    )  # fmt: skip
    assert len(starts) == len(run_ids)  # each run admitted once
    for i, at in enumerate(starts):
        in_window = [t for t in starts[i:] if t < at + 1.0]
        assert len(in_window) <= 10, f"{len(in_window)} admissions within 1 s from {at}"
    assert starts[-1] - starts[0] >= 3.0  # 35 admissions at 10 per second take 3 s at least
