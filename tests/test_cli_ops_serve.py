"""`stageline serve` for operators: log format and banner, APP import errors, store URLs.

Everything runs the real console script. Where terminal detection matters the daemon's
stdout is a pseudo-terminal (`pty`), read with `select` up to a deadline (no sleeps).
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import Daemon, cli, cli_env, cli_ok  # tests/ is on sys.path

from stageline.stores.url import redacted

pytestmark = pytest.mark.timeout(60)

APP = """
from stageline import Pipeline, Stage, Step

hello = Pipeline("hello", [Stage("greet", order=1, steps=[Step("greet", lambda s, c: {"hi": 1})])])
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "shop.py").write_text(APP)
    return tmp_path


class Terminal:
    """`stageline serve ...` with its stdout and stderr on a pseudo-terminal."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.fd, child = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "stageline", "serve", *args],
                                     env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=child, stderr=child)  # fmt: skip
        os.close(child)
        self.text = ""

    def read_until(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} within {timeout}s:\n{self.text}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.text += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the process closed the terminal
                    break
        assert needle in self.text, self.text
        return self.text

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        os.close(self.fd)
        return code


def banner_of(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stageline serve:"))
    return lines[start : start + 4]


def test_a_terminal_gets_a_banner_and_console_logs(folder):
    env = cli_env(f"sqlite:///{folder / 'runs.db'}", folder)
    term = Terminal(["shop:hello"], env, folder)
    try:
        text = term.read_until("daemon:ready")
    finally:
        assert term.stop() == 0
    head, store, pipelines, lease = banner_of(text)
    assert head.startswith("stageline serve: daemon ")
    assert store.split() == ["store", f"sqlite:///{folder / 'runs.db'}"]
    assert pipelines.split() == ["pipelines", "hello"]
    assert lease.split() == ["lease", "ttl", "30", "s", "(heartbeat", "every", "10", "s)"]
    assert text.index("stageline serve:") < text.index("daemon:ready")
    assert "\x1b[" in text  # coloured: the console renderer on a terminal
    assert not any(line.startswith("{") for line in text.splitlines())


def test_a_terminal_can_ask_for_json(folder):
    env = cli_env(f"sqlite:///{folder / 'runs.db'}", folder)
    term = Terminal(["shop:hello", "--log-format", "json"], env, folder)
    try:
        text = term.read_until('"daemon:ready"')
    finally:
        assert term.stop() == 0
    assert "stageline serve:" not in text
    lines = [json.loads(line) for line in text.replace("\r\n", "\n").splitlines() if line]
    assert "daemon:ready" in [line["event"] for line in lines]


def test_a_pipe_gets_json_lines_and_console_on_request(folder):
    env = cli_env(f"sqlite:///{folder / 'runs.db'}", folder)
    daemon = Daemon("shop:hello", env, folder)  # stdout is a pipe: JSON lines
    try:
        daemon.expect("daemon:ready")
        assert daemon.signal() == 0
    finally:
        daemon.stop()
    assert all(line.get("event") != "unparsed" for line in daemon.seen)
    console = subprocess.Popen(
        [sys.executable, "-m", "stageline", "serve", "shop:hello", "--log-format", "console"],
        env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert console.stdout is not None
        first = [console.stdout.readline() for _ in range(4)]
        assert first[0].startswith("stageline serve: daemon ")
        assert console.stdout.readline()  # a first log line
    finally:
        console.send_signal(signal.SIGTERM)
        out, _ = console.communicate(timeout=30)
    assert console.returncode == 0 and "daemon:stopped" in out and "\x1b[" not in out


def test_the_banner_hides_the_postgres_password(folder, pg_url):
    secret = pg_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    assert secret != pg_url, "the test server's URL is expected as postgresql://postgres@..."
    env = cli_env(secret, folder)  # the test server trusts its clients: any password works
    console = subprocess.Popen(
        [sys.executable, "-m", "stageline", "serve", "shop:hello", "--log-format", "console"],
        env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert console.stdout is not None
        banner = [console.stdout.readline() for _ in range(4)]
    finally:
        console.send_signal(signal.SIGTERM)
        out, err = console.communicate(timeout=30)
    assert banner[1].split()[1] == secret.replace(":s3cret@", ":***@"), (banner, err)
    assert "s3cret" not in "".join(banner) + out


# --- an APP that raises on import ------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "error", "line", "shown"),
    [
        ('RATES = {"eur": 1}\nDEFAULT = RATES["usd"]\n', "KeyError: 'usd'", 2,
         'DEFAULT = RATES["usd"]'),
        ("def rate():\n    return 1 / 0\n\nRATE = rate()\n", "ZeroDivisionError: division by zero",
         2, "return 1 / 0"),
        ("import json\nSETTINGS = json.loads('{')\n", "JSONDecodeError", 2,
         "SETTINGS = json.loads('{')"),
        ("x = (\n", "SyntaxError: '(' was never closed", 1, "x = ("),
        ("import no_such_package_for_stageline\n", "ModuleNotFoundError: No module named", 1,
         "import no_such_package_for_stageline"),
    ],
)  # fmt: skip
def test_an_app_that_raises_on_import_shows_its_error_and_line(tmp_path, source, error, line,
                                                               shown):  # fmt: skip
    (tmp_path / "broken.py").write_text(source)
    env = cli_env(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
    result = cli("serve", "broken:app", env=env, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    first, where, code = result.stderr.splitlines()
    assert first.startswith("stageline: error: APP 'broken:app' raised on import: ")
    assert error in first
    assert where == f'  File "{tmp_path / "broken.py"}", line {line}'
    assert code == f"    {shown}"
    for noise in ("Traceback", "click", "importlib", "stageline/"):
        assert noise not in result.stderr
    assert not (tmp_path / "runs.db").exists()


def test_a_missing_app_module_is_still_one_line(tmp_path):
    env = cli_env(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
    result = cli("serve", "nomodule:app", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "stageline: error: cannot import 'nomodule' for APP 'nomodule:app': "
        "No module named 'nomodule'\n"
    )


# --- store URLs --------------------------------------------------------------------------------


def test_serve_refuses_a_memory_store(folder):
    result = cli("serve", "shop:hello", "--store", "memory://", env=cli_env(None, folder),
                 cwd=folder)  # fmt: skip
    assert result.returncode == 1 and result.stderr == (
        "stageline: error: serve needs a store other processes can reach; memory:// lives "
        "inside one process: use sqlite:///runs.db (or postgresql://...)\n"
    )


@pytest.mark.parametrize("url", ["sqlite:/shop.db", "sqlite://shop.db", "sqlite:"])
def test_a_sqlite_url_with_too_few_slashes_says_how_to_write_it(folder, url):
    for args in (("serve", "shop:hello"), ("runs",)):
        result = cli(*args, "--store", url, env=cli_env(None, folder), cwd=folder)
        assert result.returncode == 1, result.stderr
        assert result.stderr == (
            f"stageline: error: cannot read SQLite store URL {url!r}: write "
            "sqlite:///relative.db (three slashes) for a path relative to the current "
            "folder, or sqlite:////abs/path.db (four) for an absolute one\n"
        )
    assert list(folder.iterdir()) == [folder / "shop.py"]


@pytest.mark.parametrize("path", ["runs.db", "data/store", "ABSOLUTE"])
def test_a_bare_path_is_a_sqlite_store(folder, path):
    (folder / "data").mkdir()
    if path == "ABSOLUTE":
        path = str(folder / "data" / "abs-runs")
    env = cli_env(path, folder)
    daemon = Daemon("shop:hello", env, folder)
    try:
        daemon.expect("daemon:ready")
        out = cli_ok("start", "hello", "--run-id", "r1", env=env, cwd=folder)
        assert out.strip() == "started run r1 (pipeline hello)"
        assert daemon.signal() == 0
    finally:
        daemon.stop()
    assert (folder / path).is_file()
    url = f"sqlite:///{path}"  # an absolute path gives the four slashes
    assert "r1" in cli_ok("runs", "--store", url, env=cli_env(None, folder), cwd=folder)


def test_redacted_hides_only_passwords():
    assert (
        redacted("postgresql://u:pw@h:5432/db?schema=s") == "postgresql://u:***@h:5432/db?schema=s"
    )
    assert (
        redacted("postgres://h/db?password=pw&schema=s") == "postgres://h/db?password=***&schema=s"
    )
    assert redacted("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redacted("sqlite:///a:b@c.db") == "sqlite:///a:b@c.db"
