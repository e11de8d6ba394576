"""Fleet reliability through the CLI (SPEC 16), with real `stageline serve` processes.

Abort waits for the run to stop, also when another daemon owns it; a killed daemon leaves
at most the request it was acting on claimed; `runs` shows a corrupt row beside the
others; a quarantined run is listed and released by `retry`; JSON options refuse what no
state can hold and JSON output never holds NaN. Every test runs on SQLite and on
PostgreSQL. Tests wait on the daemons' log lines or a command's exit, never on a sleep.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import (  # tests/ is on sys.path
    FLEET_APP,
    Daemon,
    cli,
    cli_env,
    cli_ok,
    expect_each,
    lines_json,
    one_line_error,
    raw_execute,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "shop.py").write_text(FLEET_APP)
    if request.param == "postgres":  # a schema of this test's own (conftest.pg_url)
        return cli_env(request.getfixturevalue("pg_url"), tmp_path)
    return cli_env(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)


@pytest.fixture
def daemon(tmp_path: Path, env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon("shop:app", env, tmp_path)
    d.expect("daemon:ready")
    yield d
    if d.proc.poll() is None:
        assert d.signal(signal.SIGTERM) == 0
    d.stop()


def status_of(run_id: str, env: dict[str, str], cwd: Path) -> str:
    return str(lines_json(cli_ok("show", run_id, "--json", env=env, cwd=cwd))[0]["status"])


# --- abort waits until the run has stopped ------------------------------------------------


def test_abort_returns_once_the_run_is_aborted(daemon, env, tmp_path):
    cli_ok("start", "slow", "--run-id", "s1", env=env, cwd=tmp_path)
    daemon.expect("stage:start", run_id="s1")
    out = cli_ok("abort", "s1", "--reason", "not needed", env=env, cwd=tmp_path)
    assert out == "aborted run s1\n"
    assert status_of("s1", env, tmp_path) == "aborted"  # already, not "soon"

    cli_ok("start", "slow", "--run-id", "s2", env=env, cwd=tmp_path)
    daemon.expect("stage:start", run_id="s2")
    (answer,) = lines_json(cli_ok("abort", "s2", "--json", env=env, cwd=tmp_path))
    assert (answer["status"], answer["run_status"]) == ("done", "aborted")


def test_abort_of_a_run_another_daemon_owns_waits_for_that_daemon(env, tmp_path):
    owner = Daemon("shop:app", env, tmp_path, "--lease-ttl", "9")
    other = None
    try:
        owner.expect("daemon:ready")
        for run_id in ("s1", "s2"):
            cli_ok("start", "slow", "--run-id", run_id, env=env, cwd=tmp_path)
            owner.expect("stage:start", run_id=run_id)
        other = Daemon("shop:app", env, tmp_path, "--lease-ttl", "9")
        other.expect("daemon:ready")
        owner.proc.send_signal(signal.SIGSTOP)  # the owner cannot take requests, nor act

        late = cli("abort", "s1", "--timeout", "1", env=env, cwd=tmp_path)
        assert late.returncode == 3, (late.stdout, late.stderr)
        assert late.stderr.count("\n") == 1 and "still running" in late.stderr, late.stderr
        other.expect("request:done", run_id="s1", kind="abort")  # the other daemon took it

        waiting = subprocess.Popen(
            [sys.executable, "-m", "stageline", "abort", "s2", "--timeout", "60"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        other.expect("request:done", run_id="s2", kind="abort")
        assert waiting.poll() is None  # answered, but s2 still runs: the command waits
        owner.proc.send_signal(signal.SIGCONT)  # its next lease renewal sees the flags
        out, err = waiting.communicate(timeout=60)
        assert (waiting.returncode, out, err) == (0, "aborted run s2\n", "")
        expect_each([owner], "pipeline:failure", {"s1", "s2"})
        assert status_of("s1", env, tmp_path) == status_of("s2", env, tmp_path) == "aborted"
    finally:
        if owner.proc.poll() is None:
            owner.proc.send_signal(signal.SIGCONT)
        owner.stop()
        if other is not None:
            other.stop()


# --- claims: a killed daemon strands at most the request it was acting on ------------------


def test_a_daemon_killed_while_acting_leaves_only_that_request_claimed(env, tmp_path):
    (tmp_path / "hold-start").write_text("")
    for n in range(3):
        cli_ok("start", "held", "--run-id", f"h{n}", "--no-wait", env=env, cwd=tmp_path)
    first = Daemon("shop:app", env, tmp_path)
    try:
        first.expect("acting")  # in the middle of the first start request
        first.proc.kill()  # kill -9
        first.proc.wait(timeout=30)
    finally:
        first.stop()
    url = env["STAGELINE_STORE"]
    rows = raw_execute(url, "SELECT run_id, status FROM {s}.requests ORDER BY seq")
    assert rows == [("h0", "claimed"), ("h1", "pending"), ("h2", "pending")]

    second = Daemon("shop:app", env, tmp_path)
    try:
        expect_each([second], "pipeline:success", {"h1", "h2"})
        assert second.signal(signal.SIGTERM) == 0
    finally:
        second.stop()
    rows = raw_execute(url, "SELECT run_id, status FROM {s}.requests ORDER BY seq")
    assert rows == [("h0", "claimed"), ("h1", "done"), ("h2", "done")]  # at most once


# --- corrupt rows and quarantined runs --------------------------------------------------------


def test_runs_shows_a_corrupt_row_beside_every_other(daemon, env, tmp_path):
    for run_id in ("r1", "r2", "r3"):
        cli_ok("start", "quick", "--run-id", run_id, env=env, cwd=tmp_path)
    expect_each([daemon], "pipeline:success", {"r1", "r2", "r3"})
    raw_execute(env["STAGELINE_STORE"], "UPDATE {s}.runs SET state = %s WHERE run_id = %s",
                (b"\xff\x00", "r2"))  # fmt: skip

    table = cli_ok("runs", env=env, cwd=tmp_path).splitlines()
    assert table[0].split() == ["RUN", "PIPELINE", "STATUS", "STAGE", "CREATED", "DURATION"]
    assert {line.split()[0]: line.split()[2] for line in table[1:]} == {
        "r1": "succeeded", "r2": "corrupt", "r3": "succeeded",
    }  # fmt: skip
    listed = {r["run_id"]: r for r in lines_json(cli_ok("runs", "--json", env=env, cwd=tmp_path))}
    assert [listed[r]["status"] for r in ("r1", "r2", "r3")] == ["succeeded", "corrupt", "succeeded"]
    assert listed["r2"]["error"]["kind"] == "corrupt" and listed["r2"]["error"]["message"]
    assert "error" not in listed["r1"]
    failed = cli_ok("runs", "--status", "failed", env=env, cwd=tmp_path)
    assert failed.count("\n") == 1  # the header only: a filter never fails on a bad row
    one_line_error(cli("show", "r2", env=env, cwd=tmp_path))


def test_a_quarantined_run_is_listed_and_released_by_retry(env, tmp_path):
    (tmp_path / "block-once").write_text("")
    first = Daemon("shop:app", env, tmp_path, "--lease-ttl", "1")
    try:
        first.expect("daemon:ready")
        cli_ok("start", "crashy", "--run-id", "c1", env=env, cwd=tmp_path)
        first.expect("blocking", run_id="c1")
        first.proc.kill()  # its run stays "running", owned by a dead process
        first.proc.wait(timeout=30)
    finally:
        first.stop()
    second = Daemon("shop:app", env, tmp_path, "--lease-ttl", "1", "--max-recoveries", "0")
    try:
        second.expect("daemon:ready")
        deadline = time.monotonic() + 60
        listed = []
        while not listed:  # polls the store: each look is a CLI process
            assert time.monotonic() < deadline, "c1 was not quarantined within 60 s"
            out = cli_ok("runs", "--status", "quarantined", "--json", env=env, cwd=tmp_path)
            listed = lines_json(out)
        assert [(r["run_id"], r["status"]) for r in listed] == [("c1", "quarantined")]
        assert cli_ok("runs", "--status", "running", env=env, cwd=tmp_path).count("\n") == 1

        assert cli_ok("retry", "c1", env=env, cwd=tmp_path) == "retrying run c1\n"
        second.expect("pipeline:success", run_id="c1")
        assert second.signal(signal.SIGTERM) == 0
    finally:
        second.stop()
    assert status_of("c1", env, tmp_path) == "succeeded"


# --- JSON in, JSON out ------------------------------------------------------------------------


def test_json_options_refuse_deep_nesting_and_numbers_json_has_not(tmp_path):
    env = cli_env(f"sqlite:///{tmp_path / 'runs.db'}")
    deep = '{"a": ' * 5000 + "1" + "}" * 5000
    cases = [
        (("start", "quick", "--state", deep), "--state is nested too deeply"),
        (("resume", "r", "--patch", "[" * 5000 + "]" * 5000), "--patch is nested too deeply"),
        (("start", "quick", "--state", '{"a": ' * 200 + "1" + "}" * 200), "deeper than 150"),
        (("start", "quick", "--state", '{"x": NaN}'), "--state holds NaN, which is not a finite"),
        (("start", "quick", "--state", '{"x": [Infinity]}'), "--state holds Infinity"),
        (("resume", "r", "--patch", '{"x": -Infinity}'), "--patch holds -Infinity"),
        (("start", "quick", "--state", '{"x": 1e999}'), "--state holds '1e999'"),
    ]
    for args, message in cases:
        error = one_line_error(cli(*args, env=env, cwd=tmp_path), message)
        assert len(error) < 400, error
    assert not (tmp_path / "runs.db").exists()  # refused before the store was opened


def test_json_output_never_holds_nan(daemon, env, tmp_path):
    cli_ok("start", "odd", "--run-id", "o1", env=env, cwd=tmp_path)
    daemon.expect("pipeline:success", run_id="o1")
    (shown,) = lines_json(cli_ok("show", "o1", "--json", env=env, cwd=tmp_path))
    assert shown["state"] == {"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity"}
    lines_json(cli_ok("runs", "--json", env=env, cwd=tmp_path))
    lines_json(cli_ok("logs", "o1", "--json", env=env, cwd=tmp_path))
    assert '"nan": "NaN"' in cli_ok("show", "o1", env=env, cwd=tmp_path)
