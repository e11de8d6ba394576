"""`stageline serve --http` and `stageline console`, as an operator starts them: subprocesses.

Served by the daemon, a run's event stream also carries the runtime's live events (the
stage in flight, its step's start) before the stage commits; the console alone serves
the journal and posts to the mailbox for the daemons to act on.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cli_helpers import FLEET_APP, Daemon, cli, cli_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "shop.py").write_text(FLEET_APP)
    if request.param == "postgres":
        return cli_env(request.getfixturevalue("pg_url"), tmp_path)
    return cli_env(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[Daemon, str]]:
    port = free_port()
    daemon = Daemon("shop:app", env, tmp_path, "--http", f"127.0.0.1:{port}")
    daemon.expect("daemon:ready")  # the console listens before the daemon is ready
    yield daemon, f"http://127.0.0.1:{port}"
    if daemon.proc.poll() is None:
        assert daemon.signal(signal.SIGTERM) == 0
    daemon.stop()


def test_the_daemons_console_streams_the_stage_in_flight(served):
    _, url = served
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/health").json() == {"ok": True}
        started = http.post("/api/runs?wait=true", json={"pipeline": "slow", "run_id": "s1"})
        assert started.json()["status"] == "done", started.text
        frames: list[dict] = []
        with http.stream("GET", "/api/runs/s1/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    frames.append(json.loads(line[6:]))
                    if frames[-1]["name"] == "step:start":
                        break
        live = [f for f in frames if f.get("live")]
        assert [f["name"] for f in live][-2:] == ["stage:start", "step:start"]
        assert live[-1]["step_id"] == "slow" and live[-1]["attempt"] == 1
        assert http.get("/api/stats").json()["registry"]["running"] == 1
        aborted = http.post("/api/runs/s1/abort?wait=true", json={"reason": "enough"})
        assert aborted.json()["run_status"] == "aborted", aborted.text


def test_the_console_alone_reads_the_store_and_posts_to_the_mailbox(tmp_path, env):
    daemon = Daemon("shop:app", env, tmp_path)
    daemon.expect("daemon:ready")
    port = free_port()
    console = subprocess.Popen(
        [sys.executable, "-m", "stageline", "console", "--http", f"127.0.0.1:{port}"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert console.stderr is not None
        assert f"console on http://127.0.0.1:{port}/" in console.stderr.readline()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            _wait_listening(http)
            answer = http.post("/api/runs?wait=true", json={"pipeline": "waits", "run_id": "w1"})
            assert answer.json()["status"] == "done", answer.text
            with http.stream("GET", "/api/runs/w1/events") as stream:  # until it has paused
                next(line for line in stream.iter_lines() if line == "event: pipeline:paused")
            resumed = http.post("/api/runs/w1/resume?wait=true", json={"patch": {"ok": 1}})
            assert resumed.json()["status"] == "done"
            with http.stream("GET", "/api/runs/w1/events") as stream:
                names = [line[7:] for line in stream.iter_lines() if line.startswith("event: ")]
            assert names[-2:] == ["pipeline:success", "end"]
            assert http.get("/api/stats").json()["registry"] is None  # it runs no pipelines
        console.send_signal(signal.SIGTERM)
        assert console.wait(timeout=30) == 0
    finally:
        if console.poll() is None:
            console.kill()
        daemon.signal(signal.SIGTERM)
        daemon.stop()


def _wait_listening(http: httpx.Client) -> None:
    """The console printed its line before uvicorn opened the port: connect until it
    accepts (polling another process's socket; nothing here to wait on)."""
    pause = threading.Event()
    for _ in range(400):
        try:
            http.get("/api/health")
            return
        except httpx.ConnectError:
            pause.wait(0.025)
    raise AssertionError("the console never accepted a connection")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--http", "0.0.0.0:8099"], "--http-token"),
        (["--http", "0.0.0.0:8099", "--http-token", "short"], "too short"),
        (["--http", "localhost"], "HOST:PORT"),
        (["--http", "127.0.0.1:99999"], "HOST:PORT"),
        (["--store", "memory://"], "memory://"),
    ],
)
def test_an_unsafe_or_bad_bind_is_one_line(tmp_path, env, args, words):
    for command in (["console"], ["serve", "shop:app"]):
        result = cli(*command, *args, env=env, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
