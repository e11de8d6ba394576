"""The daemon and the CLI end to end (spec section 13), driven only through subprocesses.

A real `stageline serve` runs on a temporary SQLite file with an application module
written into tmp_path; every action goes through `python -m stageline ...`. Tests wait on
the daemon's JSON log lines (or a CLI command's own exit), never on a sleep.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Daemon, cli, cli_env, cli_ok  # tests/ is on sys.path

pytestmark = pytest.mark.timeout(90)

APP = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from stageline import Pause, Pipeline, PipelineFactory, Stage, Step

    HERE = Path(__file__).parent

    def price(state, ctx):
        return {"total": sum(state["items"])}

    def approval(state, results):
        return None if state.get("approved") else Pause("ship", timeout=60)

    def ship(state, ctx):
        return {"shipped_to": state["address"]}

    def flaky(state, ctx):
        marker = HERE / "fail-once"
        if marker.exists():
            marker.unlink()
            raise RuntimeError("transient outage")
        return {"done": True}

    def slow(state, ctx):
        ctx.aborted.wait(60)
        return {"late": True}

    def block_once(state, ctx):
        marker = HERE / "block-once"
        if marker.exists():
            marker.unlink()
            ctx.log.info("blocking")
            ctx.aborted.wait(60)
        return {"finished": True}

    checkout = Pipeline("checkout", [
        Stage("price", order=1, steps=[Step("price", price)], router=approval),
        Stage("approve", order=2, steps=[Step("ask", lambda s, c: {"asked": True})]),
        Stage("ship", order=3, steps=[Step("ship", ship)]),
    ])
    flaky_pipeline = Pipeline("flaky", [
        Stage("first", order=1, steps=[Step("one", lambda s, c: {"first": True})]),
        Stage("second", order=2, steps=[Step("flaky", flaky)]),
    ])
    slow_pipeline = Pipeline("slow", [Stage("wait", order=1, steps=[Step("slow", slow)])])
    crashy = Pipeline("crashy", [Stage("block", order=1, steps=[Step("block", block_once)])])
    billing = Pipeline("billing", [
        Stage("charge", order=1, steps=[Step("charge", lambda s, c: {"charged": True})],
              router=lambda s, r: None if s.get("paid") else Pause("receipt")),
        Stage("receipt", order=2, steps=[Step("receipt", lambda s, c: {"receipt": True})]),
    ])
    packing = Pipeline("packing", [Stage("pack", order=1, steps=[Step("pack", lambda s, c: {"packed": True})])])
    order = Pipeline("order", [
        Stage("fanout", order=1, pipelines=[billing, packing]),
        Stage("close", order=2, steps=[Step("close", lambda s, c: {"closed": True})]),
    ])

    def app():
        return [
            PipelineFactory(checkout, initial_state={"items": [1, 2]}),
            flaky_pipeline,
            slow_pipeline,
            crashy,
            order,
        ]
    """
)


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "shop.py").write_text(APP)
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


def run_json(run_id: str, env: dict[str, str], cwd: Path) -> dict:
    return json.loads(cli_ok("show", run_id, "--json", env=env, cwd=cwd))


def test_start_pause_resume_and_follow_to_the_end(daemon, env, tmp_path):
    out = cli_ok("start", "checkout", "--run-id", "o1", "--state", '{"items": [5, 6]}',
                 env=env, cwd=tmp_path)  # fmt: skip
    assert out.strip() == "started run o1 (pipeline checkout)"
    daemon.expect("pipeline:paused", run_id="o1")

    table = cli_ok("runs", "--status", "paused", env=env, cwd=tmp_path)
    header = ["RUN", "PIPELINE", "STATUS", "STAGE", "CREATED", "DURATION"]
    assert table.splitlines()[0].split() == header
    assert table.splitlines()[1].split()[:4] == ["o1", "checkout", "paused", "ship"]
    listed = [
        json.loads(line) for line in cli_ok("runs", "--json", env=env, cwd=tmp_path).splitlines()
    ]
    assert [(r["run_id"], r["status"]) for r in listed] == [("o1", "paused")]

    follow = subprocess.Popen(
        [sys.executable, "-m", "stageline", "logs", "o1", "--follow", "--json"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = follow.communicate(timeout=30)  # follow stops at the pause
    assert follow.returncode == 0, err
    assert [json.loads(line)["name"] for line in out.splitlines()][-1] == "pipeline:paused"

    assert cli_ok("resume", "o1", "--patch", '{"address": "Main St 1"}', env=env, cwd=tmp_path
                  ).strip() == "resumed run o1"  # fmt: skip
    follow = subprocess.Popen(
        [sys.executable, "-m", "stageline", "logs", "o1", "--follow", "--json"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = follow.communicate(timeout=30)
    assert follow.returncode == 0, err
    names = [(e["name"], e.get("stage_id")) for e in map(json.loads, out.splitlines())]
    assert names[-4:] == [
        ("pipeline:start", None),
        ("stage:start", "ship"),
        ("stage:success", "ship"),
        ("pipeline:success", None),
    ]
    info = run_json("o1", env, tmp_path)
    assert info["status"] == "succeeded"
    assert info["state"] == {"items": [5, 6], "total": 11, "address": "Main St 1",
                             "shipped_to": "Main St 1"}  # fmt: skip
    human = cli_ok("logs", "o1", env=env, cwd=tmp_path)
    assert "stage:paused" in human and "pipeline:success" in human


def test_a_child_pipeline_pauses_the_run_and_resumes_through_the_cli(daemon, env, tmp_path):
    cli_ok("start", "order", "--run-id", "k1", env=env, cwd=tmp_path)
    daemon.expect("pipeline:paused", run_id="k1")
    human = cli_ok("logs", "k1", env=env, cwd=tmp_path)
    assert "stage:paused      billing:charge -> pause" in human
    cli_ok("resume", "k1", "--patch", '{"paid": true}', env=env, cwd=tmp_path)
    daemon.expect("pipeline:success", run_id="k1")
    info = run_json("k1", env, tmp_path)
    assert info["state"] == {"charged": True, "packed": True, "paid": True, "receipt": True,
                             "closed": True}  # fmt: skip


def test_a_request_posted_without_a_daemon_waits_in_the_mailbox(env, tmp_path):
    out = cli_ok("start", "checkout", "--run-id", "early", "--no-wait", env=env, cwd=tmp_path)
    assert out.startswith("posted start request ") and out.strip().endswith("for run early")
    nobody = cli("resume", "early", "--timeout", "0.2", env=env, cwd=tmp_path)
    assert nobody.returncode == 1  # the run does not exist yet: a user error, at once
    waiting = cli(
        "start", "checkout", "--run-id", "late", "--timeout", "0.2", env=env, cwd=tmp_path
    )
    assert waiting.returncode == 3, waiting.stderr
    assert "no answer" in waiting.stderr and "stageline serve" in waiting.stderr

    d = Daemon("shop:app", env, tmp_path)
    try:
        d.expect("daemon:ready")
        paused = {d.expect("pipeline:paused")["run_id"] for _ in range(2)}  # either order
        assert paused == {"early", "late"}
        assert d.signal(signal.SIGINT) == 0
    finally:
        d.stop()


def test_retry_of_a_failed_run(daemon, env, tmp_path):
    (tmp_path / "fail-once").write_text("")
    cli_ok("start", "flaky", "--run-id", "f1", env=env, cwd=tmp_path)
    daemon.expect("pipeline:failure", run_id="f1")
    assert run_json("f1", env, tmp_path)["status"] == "failed"

    assert cli_ok("retry", "f1", env=env, cwd=tmp_path).strip() == "retrying run f1"
    daemon.expect("pipeline:success", run_id="f1")
    info = run_json("f1", env, tmp_path)
    assert info["status"] == "succeeded" and info["state"] == {"first": True, "done": True}
    starts = [e for e in map(json.loads, cli_ok("logs", "f1", "--json", env=env, cwd=tmp_path)
              .splitlines()) if e["name"] == "stage:start"]  # fmt: skip
    assert [e["stage_id"] for e in starts] == ["first", "second", "second"]


def test_abort_a_paused_and_a_running_run(daemon, env, tmp_path):
    cli_ok("start", "checkout", "--run-id", "p1", env=env, cwd=tmp_path)
    daemon.expect("pipeline:paused", run_id="p1")
    assert cli_ok("abort", "p1", "--reason", "customer left", env=env, cwd=tmp_path
                  ).strip() == "aborted run p1"  # fmt: skip
    info = run_json("p1", env, tmp_path)
    assert info["status"] == "aborted" and "customer left" in info["error"]["message"]
    assert info["checkpoint"] is None

    cli_ok("start", "slow", "--run-id", "s1", env=env, cwd=tmp_path)
    daemon.expect("stage:start", run_id="s1")
    cli_ok("abort", "s1", env=env, cwd=tmp_path)
    daemon.expect("pipeline:failure", run_id="s1")
    assert run_json("s1", env, tmp_path)["status"] == "aborted"

    again = cli("abort", "s1", env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr == (
        "stageline: error: run 's1' is not pending, running or paused (status aborted); "
        "cannot abort it\n"
    )


def test_the_daemon_answers_what_it_cannot_do(daemon, env, tmp_path):
    unknown = cli("start", "nope", "--run-id", "n1", env=env, cwd=tmp_path)
    assert unknown.returncode == 1
    assert (
        "pipeline 'nope' is not served by this daemon (it serves: checkout, crashy, flaky, order, slow)"
        in (unknown.stderr)
    )
    bad_entry = cli("start", "checkout", "--entry", "nowhere", "--json", env=env, cwd=tmp_path)
    assert bad_entry.returncode == 1
    answer = json.loads(bad_entry.stdout)
    assert answer["status"] == "failed" and "entry 'nowhere'" in answer["answer"]


def test_user_errors_are_one_line_without_a_traceback(tmp_path, env):
    no_store = cli_env(None, tmp_path)
    missing = cli("show", "ghost", env=env, cwd=tmp_path)  # read-only: never creates it
    assert missing.returncode == 1 and "no stageline store" in missing.stderr, missing.stderr
    cli_ok("start", "checkout", "--run-id", "seed", "--no-wait", env=env, cwd=tmp_path)
    cases = [
        (("show", "ghost"), env, "run 'ghost' is not in this store"),
        (("resume", "ghost"), env, "run 'ghost' is not in this store"),
        (("logs", "ghost"), env, "run 'ghost' is not in this store"),
        (("resume", "x", "--patch", "{bad"), env, "--patch is not valid JSON"),
        (("start", "checkout", "--state", "[1]"), env, "--state must be a JSON object"),
        (("runs",), no_store, "no store given: pass --store URL or set STAGELINE_STORE"),
        (("runs", "--store", "mysql://x"), no_store, "cannot read store URL 'mysql://x'"),
        (
            ("runs", "--store", "postgresql://u@h/db"),
            no_store,
            "cannot open the PostgreSQL store h:",
        ),
        (("serve", "nomodule:app"), env, "cannot import 'nomodule'"),
    ]
    for args, environment, message in cases:
        result = cli(*args, env=environment, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("stageline: error: ") and message in result.stderr, args
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, args


def test_sigterm_stops_the_daemon_gracefully(daemon, env, tmp_path):
    cli_ok("start", "checkout", "--run-id", "g1", env=env, cwd=tmp_path)
    daemon.expect("pipeline:paused", run_id="g1")
    assert daemon.signal(signal.SIGTERM) == 0
    daemon.expect("daemon:stopped")
    assert run_json("g1", env, tmp_path)["status"] == "paused"  # resumable after a restart

    restarted = Daemon("shop:app", env, tmp_path)
    try:
        restarted.expect("daemon:ready")
        cli_ok("resume", "g1", "--patch", '{"address": "x"}', env=env, cwd=tmp_path)
        restarted.expect("pipeline:success", run_id="g1")
        assert restarted.signal(signal.SIGTERM) == 0
    finally:
        restarted.stop()


def test_failed_runs_restart_under_a_retry_policy(env, tmp_path):
    (tmp_path / "fail-once").write_text("")
    d = Daemon("shop:app", env, tmp_path, "--max-restarts", "2", "--restart-backoff", "0")
    try:
        d.expect("daemon:ready")
        cli_ok("start", "flaky", "--run-id", "f2", env=env, cwd=tmp_path)
        d.expect("pipeline:failure", run_id="f2")
        d.expect("pipeline:success", run_id="f2")
        assert d.signal(signal.SIGTERM) == 0
    finally:
        d.stop()
    assert run_json("f2", env, tmp_path)["state"] == {"first": True, "done": True}


def test_the_daemon_prunes_answered_requests(env, tmp_path):
    d = Daemon("shop:app", env, tmp_path, "--keep-answered", "0", "--lease-ttl", "0.5")
    try:
        d.expect("daemon:ready")
        cli_ok("start", "checkout", "--run-id", "k1", env=env, cwd=tmp_path)
        d.expect("daemon:pruned", requests=1)  # at the next pass, every --lease-ttl
        assert d.signal(signal.SIGTERM) == 0
    finally:
        d.stop()


def test_a_daemon_recovers_the_runs_of_a_killed_one(env, tmp_path):
    (tmp_path / "block-once").write_text("")
    first = Daemon("shop:app", env, tmp_path, "--lease-ttl", "1")
    try:
        first.expect("daemon:ready")
        cli_ok("start", "crashy", "--run-id", "c1", env=env, cwd=tmp_path)
        first.expect("blocking", run_id="c1")
        first.proc.kill()  # kill -9: no graceful stop, the run stays "running"
        first.proc.wait(timeout=30)
    finally:
        first.stop()
    orphan = run_json("c1", env, tmp_path)
    assert orphan["status"] == "running" and orphan["owner"] and orphan["lease_until"]
    assert "owner " in cli_ok("show", "c1", env=env, cwd=tmp_path)

    second = Daemon("shop:app", env, tmp_path, "--lease-ttl", "1")
    try:
        # at start or on a later pass (once the dead daemon's lease ran out): maybe before
        # "daemon:ready" is logged, so that line is not awaited first
        second.expect("pipeline:success", run_id="c1")
        assert second.signal(signal.SIGTERM) == 0
    finally:
        second.stop()
    assert run_json("c1", env, tmp_path)["state"] == {"finished": True}


def test_help_leaves_the_daemon_stores_and_logging_unimported(tmp_path):
    code = (
        "import sys\nfrom stageline.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nheavy = ('structlog', 'sqlite3', 'stageline.stores', "
        "'stageline.daemon', 'uuid6', 'psycopg', 'pykka', 'cbor2', 'stageline.actors')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(None), cwd=tmp_path,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and result.stdout.splitlines()[-1] == "[]"
