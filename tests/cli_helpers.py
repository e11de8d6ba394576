"""Helpers for tests that drive `stageline` as a user would: subprocesses only.

`Daemon` runs `stageline serve` and reads its JSON log lines on a thread, so a test waits
for a logged event (`expect`) instead of sleeping. `cli` runs one CLI command.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import stageline

ROOT = Path(stageline.__file__).resolve().parent.parent


def cli_env(store_url: str | None, *extra_paths: Path) -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout importable, the store set."""
    paths = [str(ROOT), *map(str, extra_paths)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("STAGELINE_STORE", None)
    if store_url is not None:
        env["STAGELINE_STORE"] = store_url
    return env


def cli(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stageline", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_ok(*args: str, env: dict[str, str], cwd: Path) -> str:
    result = cli(*args, env=env, cwd=cwd)
    assert result.returncode == 0, f"stageline {' '.join(args)}: {result.stderr}{result.stdout}"
    return result.stdout


class Daemon:
    """A `stageline serve` subprocess whose log lines arrive on a queue."""

    def __init__(self, app: str, env: dict[str, str], cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stageline", "serve", app, *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"event": "unparsed", "line": line})
        self.lines.put(None)

    def expect(self, event: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        """The next log line (from now on) for `event` with these fields; fail if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                line = None
                remaining = 0
            if line is None:
                self.fail(f"no {event} {fields} within {timeout}s")
            self.seen.append(line)
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                return line

    def signal(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.fail(f"daemon did not stop within {timeout}s of signal {signum}")

    def fail(self, why: str) -> Any:
        import pytest

        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        assert self.proc.stderr is not None
        pytest.fail(f"{why}\nlog: {self.seen[-20:]}\nstderr: {self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def expect_each(
    daemons: list[Daemon],
    events: str | tuple[str, ...],
    values: Any,
    *,
    key: str = "run_id",
    timeout: float = 30.0,
) -> dict[Any, Daemon]:
    """Wait until one of `events` was logged for each of `values` (`key` of the line) by any
    of `daemons`, since they started; which daemon logged each. Logged twice fails the test.
    """
    names = (events,) if isinstance(events, str) else events
    wanted = set(values)
    found: dict[Any, Daemon] = {}

    def take(daemon: Daemon, line: dict[str, Any]) -> None:
        if line.get("event") in names and line.get(key) in wanted:
            if line[key] in found:
                daemon.fail(f"{line[key]!r} logged {line['event']} twice")
            found[line[key]] = daemon

    for daemon in daemons:
        for line in daemon.seen:
            take(daemon, line)
    deadline = time.monotonic() + timeout
    live = [d for d in daemons if not getattr(d, "ended", False)]
    while len(found) < len(wanted) and live:
        if time.monotonic() > deadline:
            missing = sorted(map(str, wanted - found.keys()))
            live[0].fail(f"no {names} for {missing[:10]} within {timeout}s")
        for daemon in list(live):
            try:  # wait on output, a little on each daemon in turn
                line = daemon.lines.get(timeout=0.02)
            except queue.Empty:
                continue
            if line is None:  # the process ended
                daemon.ended = True  # type: ignore[attr-defined]
                live.remove(daemon)
                continue
            daemon.seen.append(line)
            take(daemon, line)
    if len(found) < len(wanted):
        daemons[0].fail(f"every daemon ended before {names} for {sorted(wanted - found.keys())}")
    return found


def raw_execute(store_url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one SQL statement on a store's tables behind its back (to damage a row, or read
    what the store would not); the rows it returned.

    `{s}.` before a table name is the PostgreSQL schema (dropped on SQLite); parameters
    are written `%s` (`?` on SQLite).
    """
    if store_url.startswith("sqlite:///"):
        import sqlite3

        db = sqlite3.connect(store_url[len("sqlite:///") :])
        try:
            with db:
                cursor = db.execute(statement.replace("{s}.", "").replace("%s", "?"), params)
                return cursor.fetchall()
        finally:
            db.close()
    from urllib.parse import parse_qs, urlencode

    import psycopg
    from psycopg import sql

    base, _, query = store_url.partition("?")
    options = parse_qs(query)
    schema = options.pop("schema")[0]
    dsn = f"{base}?{urlencode(options, doseq=True)}" if options else base
    quoted = sql.Identifier(schema).as_string(None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement.replace("{s}", quoted).encode(), params)
        return cursor.fetchall() if cursor.description else []


def store_url_of(store: Any) -> str:
    """The URL of a SqliteStore or PostgresStore made by conftest's `store` fixture."""
    if hasattr(store, "path"):
        return f"sqlite:///{Path(store.path).resolve()}"
    from conftest import PG_DSN

    return f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={store.schema}"


FLEET_APP = """
import json
import threading
from pathlib import Path

from stageline import Pause, Pipeline, PipelineFactory, Stage, Step

HERE = Path(__file__).parent


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


def fail(state, ctx):
    raise RuntimeError("always")


def held_start():
    marker = HERE / "hold-start"  # the daemon blocks while acting on a start request
    if marker.exists():
        marker.unlink()
        print(json.dumps({"event": "acting"}), flush=True)
        threading.Event().wait()  # until the test kills the daemon
    return {}


def odd(state, ctx):
    return {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")}


def one(name):
    return [Stage(name, order=1, steps=[Step(name, lambda s, c: {name: True})])]


slow_pipeline = Pipeline("slow", [Stage("wait", order=1, steps=[Step("slow", slow)])])
crashy = Pipeline("crashy", [Stage("block", order=1, steps=[Step("block", block_once)])])
failing = Pipeline("failing", [Stage("fail", order=1, steps=[Step("fail", fail)])])
odd_pipeline = Pipeline("odd", [Stage("odd", order=1, steps=[Step("odd", odd)])])
waits = Pipeline("waits", [
    Stage("ask", order=1, steps=[Step("ask", lambda s, c: {"asked": True})],
          router=lambda s, r: Pause("done")),
    Stage("done", order=2, steps=[Step("done", lambda s, c: {"done": True})]),
])


def app():
    return [
        slow_pipeline, crashy, failing, odd_pipeline, waits, Pipeline("quick", one("quick")),
        PipelineFactory(Pipeline("held", one("held")), initial_state=held_start),
    ]
"""
"""The application of the fleet tests (tests/test_cli_fleet*.py), written as shop.py."""


def lines_json(text: str) -> list[dict[str, Any]]:
    """JSON lines, parsed strictly: NaN or Infinity (not JSON) fails the test."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} printed in JSON output: {text[:300]}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line]


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one-line error of a command that failed (exit 1): no traceback, every needle."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("stageline: error: "), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result.stderr
