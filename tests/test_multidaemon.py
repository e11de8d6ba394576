"""Many `stageline serve` processes on one PostgreSQL schema (spec sections 10, 12, 13).

Real daemons (subprocesses) share a schema of this test (conftest.pg_url); requests go in
through the CLI or, for bursts, straight into the mailbox as the CLI would post them; the
outcome is read from the store and from each daemon's JSON log lines. Steps append a line
(run, stage, pid) to `steps.log`, so a stage that ran twice shows. Tests wait on log lines
or answers, never on a sleep.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Daemon, cli_env, expect_each  # tests/ is on sys.path

from stageline.core.mailbox import DONE, FAILED, Request
from stageline.stores import PostgresStore

pytestmark = pytest.mark.timeout(120)

APP = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from stageline import Pause, Pipeline, Stage, Step

    HERE = Path(__file__).parent

    def step(state, ctx):
        with open(HERE / "steps.log", "a") as log:  # one short append: atomic
            log.write(f"{ctx.run_id} {ctx.stage_id} {os.getpid()}\\n")
        return {ctx.stage_id: True}

    def hold(state, ctx):
        done = step(state, ctx)
        marker = HERE / f"block-{ctx.run_id}"
        if marker.exists():  # the first time only: block until the test releases it
            marker.unlink()
            ctx.log.info("blocking")
            while not (HERE / "release").exists() and not ctx.aborted.is_set():
                ctx.aborted.wait(0.02)
        return done

    def approve(state, results):
        return None if state.get("by") else Pause("ship", timeout=120)

    short = Pipeline("short", [Stage("only", order=1, steps=[Step("only", step)])])
    approval = Pipeline("approval", [
        Stage("ask", order=1, steps=[Step("ask", step)], router=approve),
        Stage("ship", order=2, steps=[Step("ship", step)]),
    ])
    long = Pipeline("long", [
        Stage("one", order=1, steps=[Step("one", step)]),
        Stage("two", order=2, steps=[Step("two", hold)]),
        Stage("three", order=3, steps=[Step("three", step)]),
    ])
    def fail_once(state, ctx):
        marker = HERE / f"fail-{ctx.run_id}"
        if marker.exists():
            marker.unlink()
            raise RuntimeError("transient outage")
        return step(state, ctx)

    flaky = Pipeline("flaky", [
        Stage("one", order=1, steps=[Step("one", step)]),
        Stage("two", order=2, steps=[Step("two", fail_once)]),
    ])
    app = [short, approval, long, flaky]
    """
)


@pytest.fixture
def env(tmp_path: Path, pg_url: str) -> dict[str, str]:
    (tmp_path / "multi.py").write_text(APP)
    return cli_env(pg_url, tmp_path)


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    from stageline.stores.url import open_store

    s = open_store(pg_url)
    assert isinstance(s, PostgresStore)
    yield s
    s.close()


@pytest.fixture
def serve(tmp_path: Path, env: dict[str, str]) -> Iterator:
    """Start n daemons on the test's schema; all are stopped (SIGTERM, exit 0) after."""
    started: list[Daemon] = []

    def start(n: int, *args: str) -> list[Daemon]:
        daemons = [Daemon("multi:app", env, tmp_path, *args) for _ in range(n)]
        started.extend(daemons)
        for d in daemons:
            d.expect("daemon:ready", waits="notify")
        return daemons

    yield start
    try:
        for d in started:
            if d.proc.poll() is None:
                assert d.signal(signal.SIGTERM) == 0
    finally:
        for d in started:
            d.stop()


def post(store: PostgresStore, kind: str, run_id: str, **fields) -> str:
    """A request into the mailbox, as `stageline start/resume --no-wait` posts it."""
    request_id = str(uuid.uuid4())
    store.post_request(Request(request_id, kind, run_id, time.time(), **fields))
    return request_id


def owner_of(daemon: Daemon) -> str:
    """The pid part of a daemon's lease owner / claimer name (host:pid:random)."""
    return f":{daemon.proc.pid}:"


def steps_run(tmp_path: Path) -> Counter[tuple[str, str]]:
    """How often each (run, stage) step ran, by any process."""
    lines = (tmp_path / "steps.log").read_text().splitlines()
    return Counter((line.split()[0], line.split()[1]) for line in lines)


def journal_count(store: PostgresStore, run_id: str, name: str) -> Counter[str | None]:
    """How often `name` is in the run's journal, per stage."""
    return Counter(e.stage_id for e in store.read_events(run_id) if e.name == name)


def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until the kernel shows process `pid` stopped (SIGSTOP is delivered
    asynchronously); polls /proc with a short backoff."""
    deadline, delay = time.monotonic() + timeout, 0.0005
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(delay)  # the kernel's state, not an event we could wait on
        delay = min(delay * 2, 0.01)


def claim_alone(daemons: list[Daemon], daemon: Daemon, store: PostgresStore, run_id: str) -> str:
    """Post a start of `run_id` while every daemon but `daemon` is stopped (SIGSTOP), so
    that `daemon` must claim and run it; its request id. The others go on (SIGCONT) after."""
    others = [d for d in daemons if d is not daemon]
    for other in others:
        other.proc.send_signal(signal.SIGSTOP)
    for other in others:  # stopped for sure: one still running could claim the request
        wait_stopped(other.proc.pid)  # and be stopped holding its row (skipped by the rest)
    try:
        request_id = post(store, "start", run_id, pipeline_id="short")
        expect_each([daemon], "request:done", [request_id], key="request_id")
        expect_each([daemon], "pipeline:success", [run_id])
    finally:
        for other in others:
            other.proc.send_signal(signal.SIGCONT)
    return request_id


@pytest.mark.parametrize("n_daemons", [2, 3])
def test_many_daemons_share_a_burst_of_runs_each_request_once(n_daemons, serve, store, tmp_path):
    daemons = serve(n_daemons)
    # every daemon claims from the shared mailbox: each in turn is the only one awake
    solo = {claim_alone(daemons, d, store, f"solo{k}"): d for k, d in enumerate(daemons)}
    for request_id, daemon in solo.items():
        assert owner_of(daemon) in str(store.get_request(request_id).claimed_by)

    # then a burst, all of them awake: which daemon claims how many depends on timing and
    # load; what must hold is that each request and each run is handled exactly once
    runs = [f"s{n:02d}" for n in range(30)]
    ids = {post(store, "start", run_id, pipeline_id="short"): run_id for run_id in runs}

    handled = expect_each(daemons, "request:done", ids, key="request_id")
    finished = expect_each(daemons, "pipeline:success", runs)

    requests = [store.get_request(request_id) for request_id in ids]
    assert all(r.status == DONE for r in requests), [r.answer for r in requests]
    for request in requests:  # claimed by the daemon that logged its answer
        assert owner_of(handled[request.request_id]) in str(request.claimed_by)
        assert finished[request.run_id] is handled[request.request_id]  # and ran it there
    per_daemon = Counter(handled.values())
    print(f"{n_daemons} daemons, burst requests claimed: {[per_daemon[d] for d in daemons]}")

    every_run = runs + [f"solo{k}" for k in range(n_daemons)]
    assert {info.run_id for info in store.list_runs(status="succeeded")} == set(every_run)
    for run_id in every_run:
        assert journal_count(store, run_id, "stage:success") == {"only": 1}
        assert journal_count(store, run_id, "pipeline:start") == {None: 1}
    assert steps_run(tmp_path) == {(run_id, "only"): 1 for run_id in every_run}


def test_racing_resumes_of_one_run_exactly_one_wins(serve, store, env, tmp_path):
    daemons = serve(2)
    runs = [f"p{n}" for n in range(10)]
    for run_id in runs:
        post(store, "start", run_id, pipeline_id="approval")
    expect_each(daemons, "pipeline:paused", runs)  # paused runs live in either daemon

    # the mailbox: two resumes of each of p0..p6, posted back to back (both daemons wake)
    by_mail = runs[:7]
    pairs = {
        run_id: [post(store, "resume", run_id, args={"patch": {"by": who}}) for who in ("a", "b")]
        for run_id in by_mail
    }
    # the CLI: two `stageline resume` processes at once for each of p7..p9
    by_cli = runs[7:]
    procs = {
        (run_id, who): subprocess.Popen(
            [sys.executable, "-m", "stageline", "resume", run_id, "--patch", f'{{"by": "{who}"}}'],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id in by_cli
        for who in ("c", "d")
    }
    outcomes = {key: (*p.communicate(timeout=60), p.returncode) for key, p in procs.items()}
    request_ids = [request_id for pair in pairs.values() for request_id in pair]
    expect_each(daemons, ("request:done", "request:failed"), request_ids, key="request_id")
    expect_each(daemons, "pipeline:success", runs)

    winners: dict[str, str] = {}
    for run_id, pair in pairs.items():
        answers = [store.get_request(request_id) for request_id in pair]
        assert sorted(a.status for a in answers) == [DONE, FAILED], (run_id, answers)
        [lost] = [a for a in answers if a.status == FAILED]
        # the daemon's status check, the store path's, or the compare-and-set, whichever
        # saw the winner first: "... is not paused (status running) ...", "... is
        # 'running', not paused ...", "... is no longer paused: another resume won ..."
        assert lost.answer.startswith(f"run {run_id!r} is "), lost.answer
        assert "not paused" in lost.answer or "no longer paused" in lost.answer, lost.answer
        assert "\n" not in lost.answer
        winners[run_id] = "ab"[answers.index(next(a for a in answers if a.status == DONE))]
    for run_id in by_cli:
        results = {who: outcomes[(run_id, who)] for who in ("c", "d")}
        [won] = [who for who, (_, _, code) in results.items() if code == 0]
        [lost] = [who for who, (_, _, code) in results.items() if code != 0]
        assert results[won][0] == f"resumed run {run_id}\n"
        out, err, code = results[lost]
        assert code == 1 and out == "", (code, out, err)
        assert err.startswith(f"stageline: error: run {run_id!r} ") and err.count("\n") == 1
        assert "not paused" in err or "no longer paused" in err, err
        winners[run_id] = won

    for run_id in runs:  # the winner's patch was committed; "ship" ran once
        info = store.get_run(run_id)
        assert info.status == "succeeded" and info.state["by"] == winners[run_id], info
        assert journal_count(store, run_id, "stage:paused") == {"ask": 1}
        assert journal_count(store, run_id, "stage:success") == {"ship": 1}
        assert sum(journal_count(store, run_id, "pipeline:start").values()) == 2
    assert steps_run(tmp_path) == {(r, s): 1 for r in runs for s in ("ask", "ship")}


def test_a_killed_daemons_runs_are_taken_over_once_after_its_lease(serve, store, tmp_path):
    daemons = serve(3, "--lease-ttl", "1")
    runs = [f"k{n}" for n in range(6)]
    for run_id in runs:
        (tmp_path / f"block-{run_id}").write_text("")
        post(store, "start", run_id, pipeline_id="long")
    blocked = expect_each(daemons, "blocking", runs)  # every run is in stage "two"
    per_daemon = Counter(blocked.values())
    victim = max(daemons, key=lambda d: per_daemon[d])
    orphans = sorted(run_id for run_id, d in blocked.items() if d is victim)
    for run_id in orphans:
        assert owner_of(victim) in str(store.get_run(run_id).owner)

    victim.proc.kill()  # SIGKILL mid-stage: no graceful stop, its runs stay "running"
    victim.proc.wait(timeout=30)
    (tmp_path / "release").write_text("")  # the survivors' own runs go on
    survivors = [d for d in daemons if d is not victim]
    killed_at = time.monotonic()
    finished = expect_each(survivors, "pipeline:success", runs, timeout=60)
    took = time.monotonic() - killed_at

    recovered = [  # each orphan taken over by exactly one survivor
        run_id
        for d in survivors
        for line in d.seen
        if line.get("event") == "daemon:recovered"
        for run_id in line["runs"]
    ]
    assert sorted(recovered) == orphans
    for run_id in orphans:
        assert finished[run_id] in survivors
        assert owner_of(finished[run_id]) in str(store.get_run(run_id).owner)
    assert took < 15, f"takeover took {took:.1f}s with a 1 s lease"

    ran = steps_run(tmp_path)
    for run_id in runs:
        info = store.get_run(run_id)
        assert info.status == "succeeded" and info.state == {"one": True, "two": True,
                                                            "three": True}  # fmt: skip
        # committed stages ran once; only the stage in flight at the kill ran again
        assert journal_count(store, run_id, "stage:success") == {"one": 1, "two": 1, "three": 1}
        assert ran[(run_id, "one")] == ran[(run_id, "three")] == 1
        assert ran[(run_id, "two")] == (2 if run_id in orphans else 1)


def test_the_throughput_script_runs(pg_dsn):
    """scripts/daemon_throughput.py (docs/scaling.md's figures) works; timings not judged."""
    if not pg_dsn.startswith(("postgresql://", "postgres://")):
        pytest.skip(f"the script takes a URL, STAGELINE_TEST_PG_DSN is {pg_dsn!r}")
    script = Path(__file__).resolve().parent.parent / "scripts" / "daemon_throughput.py"
    result = subprocess.run(
        [sys.executable, str(script), "--runs", "5", "--daemons", "1,2", "--reps", "1",
         "--dsn", pg_dsn],
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == ["1", "2"] and all(float(row[1]) > 0 for row in rows)


def test_a_stopped_daemon_hands_its_running_runs_over(serve, store, tmp_path):
    daemons = serve(2, "--lease-ttl", "1", "--stop-timeout", "0.5")
    runs = [f"t{n}" for n in range(4)]
    for run_id in runs:
        (tmp_path / f"block-{run_id}").write_text("")
        post(store, "start", run_id, pipeline_id="long")
    blocked = expect_each(daemons, "blocking", runs)
    per_daemon = Counter(blocked.values())
    leaving = max(daemons, key=lambda d: per_daemon[d])
    [staying] = [d for d in daemons if d is not leaving]
    handed = sorted(run_id for run_id, d in blocked.items() if d is leaving)

    # its stages cannot commit within the 0.5 s: it stops them, releases their leases and
    # exits; the other daemon takes them over at its next recovery pass
    assert leaving.signal(signal.SIGTERM) == 0
    (tmp_path / "release").write_text("")
    finished = expect_each([staying], "pipeline:success", runs, timeout=60)
    assert set(finished) == set(runs)
    ran = steps_run(tmp_path)
    for run_id in runs:
        assert store.get_run(run_id).status == "succeeded"
        assert journal_count(store, run_id, "stage:success") == {"one": 1, "two": 1, "three": 1}
        assert ran[(run_id, "one")] == ran[(run_id, "three")] == 1
        assert ran[(run_id, "two")] == (2 if run_id in handed else 1)


def test_racing_retries_of_a_failed_run_exactly_one_wins(serve, store, tmp_path):
    daemons = serve(2)
    runs = [f"f{n}" for n in range(6)]
    for run_id in runs:
        (tmp_path / f"fail-{run_id}").write_text("")
        post(store, "start", run_id, pipeline_id="flaky")
    expect_each(daemons, "pipeline:failure", runs)  # failed runs live in either daemon

    pairs = {run_id: [post(store, "retry", run_id) for _ in range(2)] for run_id in runs}
    request_ids = [request_id for pair in pairs.values() for request_id in pair]
    expect_each(daemons, ("request:done", "request:failed"), request_ids, key="request_id")
    expect_each(daemons, "pipeline:success", runs)
    for run_id, pair in pairs.items():
        answers = [store.get_request(request_id) for request_id in pair]
        assert sorted(a.status for a in answers) == [DONE, FAILED], (run_id, answers)
        [lost] = [a.answer for a in answers if a.status == FAILED]
        assert lost.startswith(f"run {run_id!r} is ") and "\n" not in lost, lost
        assert store.get_run(run_id).status == "succeeded"
        assert journal_count(store, run_id, "stage:success") == {"one": 1, "two": 1}
    assert steps_run(tmp_path) == {(r, s): 1 for r in runs for s in ("one", "two")}
