"""What `stageline` shows of runs, through the real console script and real daemons.

`logs --follow`, `wait` and `start --follow` exit by how the run ended (0 succeeded or
paused, 1 failed) and say which stage is in flight; Ctrl-C on a terminal exits 130 with no
"Aborted!"; `retry --patch` fixes a run that failed for missing data; `show` names where
child pipelines wait, prints tracebacks and no owner for a stopped run; JSON times are
ISO-8601 UTC. Tests wait on a daemon's log lines or a command's output, never on a sleep.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Daemon, cli_env, lines_json  # tests/ is on sys.path

pytestmark = pytest.mark.timeout(120)

VIEWS_APP = """
from pathlib import Path

from stageline import Pause, Pipeline, PipelineFactory, Stage, Step

HERE = Path(__file__).parent


def gate(state, ctx):
    while not (HERE / "release").exists():  # the test creates it once it saw the stage
        if ctx.aborted.wait(0.01):
            break
    return {"released": True}


def ship(state, ctx):
    return {"shipped_to": state["address"]}  # KeyError without an address


def one(pid, stage, action, router=None):
    return Pipeline(pid, [Stage(stage, order=1, steps=[Step(stage, action)], router=router)])


gated = Pipeline("gated", [
    Stage("first", order=1, steps=[Step("first", lambda s, c: {"first": True})]),
    Stage("slow", order=2, steps=[Step("gate", gate)]),
])
kid = one("kid", "ask", lambda s, c: {"asked": True}, router=lambda s, r: Pause("ask"))
parent = Pipeline("parent", [Stage("fanout", order=1, pipelines=[kid])])


def app():
    return [gated, one("needs", "ship", ship), parent,
            one("quick", "quick", lambda s, c: {"quick": True}),
            one("waits", "ask", lambda s, c: {}, router=lambda s, r: Pause("ask"))]
"""
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def console_script() -> list[str]:
    """The installed `stageline` console script (`python -m stageline` without one)."""
    script = Path(sys.executable).parent / "stageline"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stageline"]


class Terminal:
    """A command on a pseudo-terminal of its own (its controlling terminal: ^C is SIGINT)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: never return into pytest
            try:
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.output = ""

    def read(self, timeout: float) -> bool:
        """Read what is there within `timeout`; False once the terminal closed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed its side
            return False
        self.output += data.decode(errors="replace")
        return bool(data)

    def read_until(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            assert time.monotonic() < deadline and self.read(0.1), self.output

    def interrupt(self) -> None:
        os.write(self.fd, b"\x03")  # Ctrl-C, as typed

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """The exit status and everything printed."""
        deadline = time.monotonic() + timeout
        while self.read(0.1):
            assert time.monotonic() < deadline, self.output
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status), self.output


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "views_app.py").write_text(VIEWS_APP)
    if request.param == "postgres":
        return cli_env(request.getfixturevalue("pg_url"), tmp_path)
    return cli_env(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)


@pytest.fixture
def daemon(tmp_path: Path, env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon("views_app:app", env, tmp_path)
    d.expect("daemon:ready")
    yield d
    if d.proc.poll() is None:
        assert d.signal(signal.SIGTERM) == 0
    d.stop()


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*console_script(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def ok(*args: str, env: dict[str, str], cwd: Path) -> str:
    result = run_cli(*args, env=env, cwd=cwd)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


# --- following a run to its end ---------------------------------------------------------


def test_start_follow_and_wait_exit_by_the_outcome(daemon, env, tmp_path):
    done = run_cli("start", "quick", "--run-id", "q", "--follow", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pipeline:success" in done.stdout and done.stdout.endswith("run q succeeded\n")
    failed = run_cli("start", "needs", "--run-id", "n", "--follow", env=env, cwd=tmp_path)
    assert failed.returncode == 1 and "run n failed: " in failed.stdout, failed.stdout
    paused = run_cli("start", "waits", "--run-id", "w", "--follow", env=env, cwd=tmp_path)
    assert paused.returncode == 0 and "run w is paused (resume at ask)" in paused.stdout
    assert run_cli("wait", "q", env=env, cwd=tmp_path).stdout == "run q succeeded\n"
    assert run_cli("wait", "n", env=env, cwd=tmp_path).returncode == 1
    assert run_cli("logs", "n", "--follow", env=env, cwd=tmp_path).returncode == 1
    (line,) = lines_json(ok("wait", "w", "--json", env=env, cwd=tmp_path))
    assert line["status"] == "paused" and ISO_UTC.fullmatch(line["created_at"])


def test_follow_names_the_stage_in_flight_and_waits_for_its_end(daemon, env, tmp_path):
    ok("start", "gated", "--run-id", "g", env=env, cwd=tmp_path)
    follower = subprocess.Popen(
        [*console_script(), "logs", "g", "--follow"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follower.stdout is not None
    seen = []
    for line in follower.stdout:
        seen.append(line)
        if "in flight" in line:
            break
    assert re.search(r"stage slow in flight \(since .+, (just now|\d+ s ago)\)", seen[-1])
    assert any("stage:success" in line and "first" in line for line in seen), seen
    still = run_cli("wait", "g", "--timeout", "0.2", env=env, cwd=tmp_path)
    assert still.returncode == 3 and "still running" in still.stderr
    (tmp_path / "release").touch()
    rest = follower.stdout.read()
    assert follower.wait(timeout=30) == 0
    assert rest.endswith("run g succeeded\n") and rest.count("in flight") == 0, rest


def test_ctrl_c_exits_130_without_aborted(daemon, env, tmp_path):
    ok("start", "gated", "--run-id", "g", env=env, cwd=tmp_path)
    for command in (["logs", "g", "--follow"], ["wait", "g"]):
        terminal = Terminal([*console_script(), *command], env, tmp_path)
        terminal.read_until("in flight" if command[0] == "logs" else "waiting for run g")
        terminal.interrupt()
        status, output = terminal.finish()
        assert status == 130, (command, output)
        assert "Aborted" not in output and "Traceback" not in output, output
    (tmp_path / "release").touch()
    assert run_cli("wait", "g", env=env, cwd=tmp_path).returncode == 0


# --- retry with a fix --------------------------------------------------------------------


def test_retry_patch_fixes_a_run_that_failed_for_missing_data(daemon, env, tmp_path):
    assert run_cli("start", "needs", "--run-id", "n", "--follow", env=env, cwd=tmp_path).returncode
    shown = ok("show", "n", env=env, cwd=tmp_path)
    assert "traceback\nstep ship:\nTraceback (most recent call last):" in shown, shown
    assert "KeyError: 'address'" in shown and "\nowner" not in shown
    bad = run_cli("retry", "n", "--patch", "[1]", env=env, cwd=tmp_path)
    assert bad.returncode == 1 and "--patch must be a JSON object" in bad.stderr
    patch = '{"address": "12 Main St"}'
    assert ok("retry", "n", "--patch", patch, env=env, cwd=tmp_path) == "retrying run n\n"
    assert ok("wait", "n", env=env, cwd=tmp_path) == "run n succeeded\n"
    (run,) = lines_json(ok("show", "n", "--json", env=env, cwd=tmp_path))
    assert run["state"]["shipped_to"] == "12 Main St"


# --- show and JSON times -----------------------------------------------------------------


def test_show_names_where_each_child_waits(daemon, env, tmp_path):
    ok("start", "parent", "--run-id", "p", "--follow", env=env, cwd=tmp_path)
    shown = ok("show", "p", env=env, cwd=tmp_path)
    assert re.search(r"\nchildren\n  parent/fanout/kid  paused at ask\n", shown), shown
    assert re.search(r"\ncreated +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(", shown), shown
    assert re.search(r"\nduration +\d+ (ms|s)", shown) and "\nowner" not in shown
    (data,) = lines_json(ok("show", "p", "--json", env=env, cwd=tmp_path))
    assert data["children"]["parent/fanout/kid"]["status"] == "paused"


def test_json_times_are_iso_utc_everywhere(daemon, env, tmp_path):
    ok("start", "waits", "--run-id", "w", "--follow", env=env, cwd=tmp_path)
    (shown,) = lines_json(ok("show", "w", "--json", env=env, cwd=tmp_path))
    times = [shown["created_at"], shown["updated_at"], shown["checkpoint"]["paused_on"]]
    times += [event["ts"] for event in lines_json(ok("logs", "w", "--json", env=env, cwd=tmp_path))]
    times += [run["updated_at"] for run in lines_json(ok("runs", "--json", env=env, cwd=tmp_path))]
    assert times and all(ISO_UTC.fullmatch(t) for t in times), times
    first = ok("logs", "w", env=env, cwd=tmp_path).splitlines()[0]
    assert re.match(r" +1  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+  pipeline:start", first)


@pytest.mark.parametrize("env", ["sqlite"], indirect=True)
def test_runs_newest_first_limited_and_since(daemon, env, tmp_path):
    for run_id in ("r1", "r2", "r3"):
        ok("start", "quick", "--run-id", run_id, "--follow", env=env, cwd=tmp_path)
    listed = lines_json(ok("runs", "--json", env=env, cwd=tmp_path))
    assert [r["run_id"] for r in listed] == ["r3", "r2", "r1"]
    limited = run_cli("runs", "--limit", "2", env=env, cwd=tmp_path)
    lines = limited.stdout.splitlines()
    assert lines[0].split() == ["RUN", "PIPELINE", "STATUS", "STAGE", "CREATED", "DURATION"]
    assert [line.split()[0] for line in lines[1:3]] == ["r3", "r2"]
    assert lines[3] == "... 1 more run not shown (--limit 2); raise --limit to see them"
    assert "\x1b[" not in limited.stdout  # not a terminal: plain text
    assert ok("runs", "--since", "1h", "--json", env=env, cwd=tmp_path).count("\n") == 3
    bad = run_cli("runs", "--since", "1 hour", env=env, cwd=tmp_path)
    assert bad.returncode == 1 and "--since must be a number and a unit" in bad.stderr


@pytest.mark.parametrize("env", ["sqlite"], indirect=True)
def test_runs_on_a_terminal_is_coloured_unless_no_color(daemon, env, tmp_path):
    ok("start", "quick", "--run-id", "q", "--follow", env=env, cwd=tmp_path)
    coloured = Terminal([*console_script(), "runs"], env, tmp_path).finish()
    assert coloured[0] == 0 and "\x1b[32msucceeded" in coloured[1], coloured
    plain = Terminal([*console_script(), "runs"], {**env, "NO_COLOR": "1"}, tmp_path).finish()
    assert plain[0] == 0 and "succeeded" in plain[1] and "\x1b[3" not in plain[1], plain


# --- shell completion --------------------------------------------------------------------


@pytest.mark.parametrize("env", ["sqlite"], indirect=True)
def test_completion_offers_run_and_pipeline_ids_and_fails_silently(daemon, env, tmp_path):
    ok("start", "quick", "--run-id", "quick-1", "--follow", env=env, cwd=tmp_path)

    def complete(words: str, **extra: str) -> str:
        cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        shell = {"_STAGELINE_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
        return ok(env={**env, **shell, **extra}, cwd=tmp_path)

    assert complete("stageline show q") == "plain,quick-1\n"
    assert complete("stageline start ") == "plain,quick\n"
    store = env["STAGELINE_STORE"]
    assert complete("stageline logs ", STAGELINE_STORE="").strip() == ""
    assert complete(f"stageline wait --store {store} q", STAGELINE_STORE="") == "plain,quick-1\n"
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    assert complete("stageline show ", STAGELINE_STORE=missing).strip() == ""
    assert not (tmp_path / "nothing.db").exists()


def test_help_imports_neither_rich_nor_the_stores():
    code = "import sys, stageline.cli; print(sorted(m for m in sys.modules if m.startswith(('rich', 'stageline.stores', 'pykka'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout == "[]\n", out.stderr
