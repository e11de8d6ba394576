"""Durable time across processes (spec section 15): kill -9 of a daemon while its runs sleep
or wait on `Pause(expires_in=...)`.

Real `stageline serve` subprocesses. Runs are started through the store's mailbox, as
`stageline start --no-wait` posts them; the daemon that acts on them sleeps (or pauses) each
for S seconds of real time and is SIGKILLed before any is due. Then a restarted daemon (a
SQLite file) or the other daemon (two daemons on one PostgreSQL schema) must wake each run
exactly once, when due and never early; and two live daemons, both with a timer for
every run, act on each exactly once. The step that runs after the wake appends a line
`run_id wall_time stage expired pid` to `woke.log` (one short append: atomic), so a run
woken twice, or early, shows. Tests wait on log lines or poll the store, never sleep.
"""

from __future__ import annotations

import signal
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Daemon, cli_env, expect_each  # tests/ is on sys.path

from stageline.core.mailbox import Request
from stageline.stores.url import open_store
from stageline.testing import wait_for_status

pytestmark = pytest.mark.timeout(120)

S = 3.0  # seconds of real time each run sleeps, or waits before its pause expires
LATE_OK = 5.0  # "when due": a run goes on within this many seconds of its wake_at
N = 10  # runs of each pipeline

APP = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    from stageline import PIPELINE_DATA_KEY, TERMINATE, Pause, Pipeline, Sleep, Stage, Step

    HERE = Path(__file__).parent
    S = float(os.environ["TIME_TEST_SECONDS"])

    def record(state, ctx):
        expired = bool(state.get(PIPELINE_DATA_KEY, {}).get("expired", False))
        with open(HERE / "woke.log", "a") as log:  # one short append: atomic
            log.write(f"{ctx.run_id} {time.time()!r} {ctx.stage_id} {expired} {os.getpid()}\\n")
        return {ctx.stage_id: True}

    napper = Pipeline("napper", [
        Stage("nap", 1, router=lambda state, results: Sleep("wake", seconds=S)),
        Stage("wake", 2, steps=[Step("wake", record)]),
    ])
    deadline = Pipeline("deadline", [
        Stage("ask", 1, router=lambda state, results: Pause("approved", expires_in=S,
                                                             on_expiry="late")),
        Stage("approved", 2, steps=[Step("approved", record)],
              router=lambda state, results: TERMINATE),
        Stage("late", 3, steps=[Step("late", record)]),
    ])
    lapsing = Pipeline("lapsing", [
        Stage("ask", 1, router=lambda state, results: Pause("approved", expires_in=S)),
        Stage("approved", 2, steps=[Step("approved", record)]),
    ])
    app = [napper, deadline, lapsing]
    """
)

NAPS = [f"nap{i:02d}" for i in range(N)]  # sleep, then wake at "wake"
LATES = [f"late{i:02d}" for i in range(N)]  # pause expires: on at "late"
LAPSES = [f"lapse{i:02d}" for i in range(N)]  # pause expires, no on_expiry: "expired"
PIPELINE_OF = {**dict.fromkeys(NAPS, "napper"), **dict.fromkeys(LATES, "deadline"),
               **dict.fromkeys(LAPSES, "lapsing")}  # fmt: skip


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or a PostgreSQL schema of this test (by the test's parameter)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def env(tmp_path: Path, store_url: str) -> dict[str, str]:
    (tmp_path / "timeapp.py").write_text(APP)
    return {**cli_env(store_url, tmp_path), "TIME_TEST_SECONDS": str(S)}


@pytest.fixture
def store(store_url: str, env: dict[str, str]) -> Iterator[Any]:
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def serve(tmp_path: Path, env: dict[str, str]) -> Iterator:
    """Start a daemon on the test's store (ready when it returns); all are killed after."""
    started: list[Daemon] = []

    def start(*args: str) -> Daemon:
        daemon = Daemon("timeapp:app", env, tmp_path, "--lease-ttl", "1", *args)
        started.append(daemon)
        daemon.expect("daemon:ready")
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.signal(signal.SIGTERM)
        daemon.stop()


def post_starts(store: Any) -> None:
    """A start request for every run, into the mailbox, as `stageline start` posts it."""
    for run_id, pipeline_id in PIPELINE_OF.items():
        request = Request(str(uuid.uuid4()), "start", run_id, time.time(), pipeline_id=pipeline_id)
        store.post_request(request)


def put_to_sleep(daemons: list[Daemon], store: Any) -> dict[str, float]:
    """Start every run in `daemons`, wait until each sleeps or pauses; their wake_at."""
    post_starts(store)
    due: dict[str, float] = {}
    for run_id in PIPELINE_OF:  # each read as soon as it is logged, long before it is due
        waits = "sleeping" if run_id in NAPS else "paused"
        expect_each(daemons, f"pipeline:{waits}", [run_id])
        info = store.get_run(run_id)
        assert info.status == waits and info.wake_at is not None, info
        due[run_id] = info.wake_at.timestamp()
    return due


def kill_before_due(daemon: Daemon, due: dict[str, float], tmp_path: Path) -> None:
    """SIGKILL `daemon` while every run still waits (none due, none woken)."""
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=30)
    killed_at = time.time()
    print(f"killed {min(due.values()) - killed_at:.2f}s before the first was due")
    assert killed_at < min(due.values()), "the runs were due before the daemon was killed"
    assert not (tmp_path / "woke.log").exists()


def woken(tmp_path: Path) -> list[tuple[str, float, str, bool, int]]:
    lines = (tmp_path / "woke.log").read_text().splitlines()
    return [
        (run_id, float(wall), stage, expired == "True", int(pid))
        for run_id, wall, stage, expired, pid in (line.split() for line in lines)
    ]


def check_woken_once_when_due(
    store: Any, tmp_path: Path, due: dict[str, float], by: list[Daemon]
) -> None:
    """Each run went on exactly once, in one of `by`, at its wake_at or later (never
    early), and soon after (when due)."""
    lines = woken(tmp_path)
    assert Counter(run_id for run_id, *_ in lines) == Counter(NAPS + LATES), lines
    for run_id, wall, stage, expired, pid in lines:
        assert wall >= due[run_id], f"{run_id} went on {due[run_id] - wall:.3f}s early"
        assert wall < due[run_id] + LATE_OK, f"{run_id} went on {wall - due[run_id]:.3f}s late"
        assert pid in {d.proc.pid for d in by}, (run_id, pid)
        assert (stage, expired) == (("wake", False) if run_id in NAPS else ("late", True))
    for run_id in NAPS + LATES:
        info = store.get_run(run_id)
        assert info.status == "succeeded" and info.wake_at is None, info
        starts = [e for e in store.read_events(run_id) if e.name == "pipeline:start"]
        assert len(starts) == 2, starts  # the first segment's, then the wake's (once)
        assert due[run_id] <= starts[1].ts < due[run_id] + LATE_OK
    for run_id in LAPSES:
        info = store.get_run(run_id)
        assert info.status == "expired" and info.checkpoint is None, info
        expired_at = info.updated_at.timestamp()
        assert due[run_id] <= expired_at < due[run_id] + LATE_OK, (run_id, info.updated_at)
        assert [e.name for e in store.read_events(run_id)].count("pipeline:start") == 1


def wait_all_moved_on(store: Any, daemons: list[Daemon]) -> None:
    expect_each(daemons, "pipeline:success", NAPS + LATES, timeout=S + 30)
    for run_id in LAPSES:
        wait_for_status(store, run_id, "expired", timeout=S + 30)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_restarted_daemon_wakes_what_a_killed_one_slept_once_each_never_early(
    store, serve, tmp_path
):
    first = serve()
    due = put_to_sleep([first], store)
    kill_before_due(first, due, tmp_path)
    second = serve()  # the same file, after the kill: its recover arms every timer
    wait_all_moved_on(store, [second])
    check_woken_once_when_due(store, tmp_path, due, [second])


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_the_other_daemon_wakes_what_a_killed_one_slept_once_each_never_early(
    store, serve, tmp_path
):
    first, other = serve(), serve()
    other.proc.send_signal(signal.SIGSTOP)  # so that `first` starts, and sleeps, every run
    try:
        due = put_to_sleep([first], store)
    finally:
        other.proc.send_signal(signal.SIGCONT)
    kill_before_due(first, due, tmp_path)
    wait_all_moved_on(store, [other])
    check_woken_once_when_due(store, tmp_path, due, [other])


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_two_live_daemons_racing_for_every_wake_act_once_each(store, serve, tmp_path):
    """No kill: both daemons arm a timer for every run (the one that slept it, and the
    other's recovery pass every lease_ttl); for each run exactly one acts."""
    daemons = [serve(), serve()]
    due = put_to_sleep(daemons, store)
    wait_all_moved_on(store, daemons)
    check_woken_once_when_due(store, tmp_path, due, daemons)
