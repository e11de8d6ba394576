"""The CLI and the store it is given (SPEC 16): who creates it, who must be able to write
it, what `serve` imports from the current folder, and retention (`gc`, `serve --retain`).

Real `stageline` processes on SQLite and PostgreSQL; tests wait on the daemons' log lines
or a command's exit, never on a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
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

from stageline._duration import DurationError, parse_duration

pytestmark = pytest.mark.timeout(120)

READERS = [
    ("runs",),
    ("runs", "--status", "quarantined"),
    ("show", "r1"),
    ("logs", "r1"),
    ("resume", "r1"),
    ("retry", "r1"),
    ("abort", "r1"),
    ("gc", "--older-than", "1d"),
    ("gc", "--older-than", "1d", "--dry-run"),
]
"""Commands that need a store to exist already (they read it, or act on a run in it)."""


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "shop.py").write_text(FLEET_APP)
    if request.param == "postgres":  # a schema of this test's own (conftest.pg_url)
        return cli_env(request.getfixturevalue("pg_url"), tmp_path)
    return cli_env(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)


def schema_of(url: str) -> str:
    return url.rpartition("schema=")[2]


def schema_exists(dsn: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(dsn) as conn:
        query = "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s"
        return conn.execute(query, (schema,)).fetchone() is not None


# --- read-only commands never create a store; serve and start do ---------------------------


def test_read_only_commands_never_create_a_sqlite_store(tmp_path):
    env = cli_env("sqlite:///missing.db")  # relative: the message names the absolute path
    for args in READERS:
        one_line_error(cli(*args, env=env, cwd=tmp_path), str(tmp_path / "missing.db"))
    assert list(tmp_path.iterdir()) == []
    cli_ok("start", "quick", "--run-id", "r1", "--no-wait", env=env, cwd=tmp_path)
    assert (tmp_path / "missing.db").exists()  # a request may wait for the first daemon
    assert "r1" not in cli_ok("runs", env=env, cwd=tmp_path)  # the store opens now


def test_read_only_commands_never_create_a_postgres_schema(tmp_path, pg_dsn, pg_url):
    env = cli_env(pg_url)
    schema = schema_of(pg_url)
    for args in READERS:
        one_line_error(cli(*args, env=env, cwd=tmp_path), schema)
    assert not schema_exists(pg_dsn, schema)
    (tmp_path / "shop.py").write_text(FLEET_APP)
    daemon = Daemon("shop:app", cli_env(pg_url, tmp_path), tmp_path)
    try:
        daemon.expect("daemon:ready")  # serve creates it
        assert schema_exists(pg_dsn, schema)
        assert daemon.signal(signal.SIGTERM) == 0
    finally:
        daemon.stop()
    assert cli_ok("runs", env=env, cwd=tmp_path).startswith("RUN ")


# --- serve on a store it cannot write: one line at start ------------------------------------


def without_root_override() -> list[str]:
    """A command prefix under which this process cannot write a file mode 0400: none for
    an ordinary user; for root, setpriv dropping the capability that overrides modes."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only file is writable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_serve_refuses_a_sqlite_store_it_cannot_write(tmp_path):
    (tmp_path / "shop.py").write_text(FLEET_APP)
    db = tmp_path / "runs.db"
    env = cli_env(f"sqlite:///{db}", tmp_path)
    cli_ok("start", "quick", "--run-id", "r1", "--no-wait", env=env, cwd=tmp_path)
    for path in tmp_path.glob("runs.db*"):
        path.chmod(0o400)
    result = subprocess.run(
        [*without_root_override(), sys.executable, "-m", "stageline", "serve", "shop:app"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("stageline: error: ") and str(db) in result.stderr
    assert "readonly" in result.stderr or "read-only" in result.stderr, result.stderr
    assert "daemon:ready" not in result.stdout


def test_serve_refuses_a_postgres_schema_it_cannot_write(tmp_path, pg_dsn, pg_url):
    import psycopg
    from psycopg import sql

    (tmp_path / "shop.py").write_text(FLEET_APP)
    cli_ok("start", "quick", "--run-id", "r1", "--no-wait", env=cli_env(pg_url), cwd=tmp_path)
    role = f"stageline_ro_{uuid.uuid4().hex[:8]}"
    schema = sql.Identifier(schema_of(pg_url))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for grant in ("GRANT USAGE ON SCHEMA {} TO {}",
                      "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}"):  # fmt: skip
            conn.execute(sql.SQL(grant).format(schema, sql.Identifier(role)))
    try:
        reader_url = pg_url.replace("postgres@", f"{role}@", 1)
        assert reader_url != pg_url, "the test server's dsn must name the user postgres"
        env = cli_env(reader_url, tmp_path)
        assert "r1" not in cli_ok("runs", env=env, cwd=tmp_path)  # it can read
        result = cli("serve", "shop:app", env=env, cwd=tmp_path)
        one_line_error(result, schema_of(pg_url))
        assert "daemon:ready" not in result.stdout
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# --- serve imports APP from the current folder, never the library's modules -----------------


@pytest.mark.parametrize("shadow", ["sqlite3", "psycopg"])
def test_a_module_in_the_current_folder_does_not_shadow_the_library(shadow, tmp_path, request):
    (tmp_path / "shop.py").write_text(FLEET_APP)
    (tmp_path / f"{shadow}.py").write_text(f"raise ImportError('the {shadow}.py of cwd')\n")
    url = (
        request.getfixturevalue("pg_url")
        if shadow == "psycopg"
        else f"sqlite:///{tmp_path / 'runs.db'}"
    )
    env = cli_env(url)  # the current folder is not on PYTHONPATH: serve makes it importable
    elsewhere = tmp_path / "elsewhere"  # the client commands run from another folder
    elsewhere.mkdir()
    daemon = Daemon("shop:app", env, tmp_path)  # python -m stageline serve, in tmp_path
    try:
        daemon.expect("daemon:ready")
        cli_ok("start", "quick", "--run-id", "r1", env=env, cwd=elsewhere)
        daemon.expect("pipeline:success", run_id="r1")
        assert daemon.signal(signal.SIGTERM) == 0
    finally:
        daemon.stop()


# --- retention ---------------------------------------------------------------------------------


def make_runs(env: dict[str, str], cwd: Path) -> None:
    """q1, q2 succeeded, f1 failed, a1 aborted, w1 paused (stopping the daemon after)."""
    daemon = Daemon("shop:app", env, cwd)
    try:
        daemon.expect("daemon:ready")
        for pipeline, run_id in [("quick", "q1"), ("quick", "q2"), ("failing", "f1"),
                                 ("waits", "w1"), ("slow", "a1")]:  # fmt: skip
            cli_ok("start", pipeline, "--run-id", run_id, env=env, cwd=cwd)
        daemon.expect("stage:start", run_id="a1")
        cli_ok("abort", "a1", env=env, cwd=cwd)
        expect_each([daemon], ("pipeline:success", "pipeline:failure", "pipeline:paused"),
                    {"q1", "q2", "f1", "w1", "a1"})  # fmt: skip
        assert daemon.signal(signal.SIGTERM) == 0
    finally:
        daemon.stop()


def age(env: dict[str, str], run_ids: tuple[str, ...], seconds: float) -> None:
    """Make runs look last updated `seconds` earlier than they were."""
    for run_id in run_ids:
        raw_execute(env["STAGELINE_STORE"],
                    "UPDATE {s}.runs SET updated_at = updated_at - %s WHERE run_id = %s",
                    (seconds, run_id))  # fmt: skip


def run_ids(env: dict[str, str], cwd: Path) -> set[str]:
    return {r["run_id"] for r in lines_json(cli_ok("runs", "--json", env=env, cwd=cwd))}


def journal_of(env: dict[str, str], run_id: str) -> int:
    query = "SELECT count(*) FROM {s}.events WHERE run_id = %s"
    return int(raw_execute(env["STAGELINE_STORE"], query, (run_id,))[0][0])


def test_gc_deletes_finished_runs_older_than_the_duration(env, tmp_path):
    make_runs(env, tmp_path)
    assert run_ids(env, tmp_path) == {"q1", "q2", "f1", "w1", "a1"}
    out = cli_ok("gc", "--older-than", "1h", "--dry-run", env=env, cwd=tmp_path)
    assert out.startswith("would delete 0 runs (succeeded, failed, aborted, expired) ")
    age(env, ("q1", "f1", "a1", "w1"), 7200)

    (dry,) = lines_json(cli_ok("gc", "--older-than", "1h", "--dry-run", "--json",
                               env=env, cwd=tmp_path))  # fmt: skip
    assert (dry["runs"], dry["dry_run"]) == (3, True)
    assert dry["statuses"] == ["succeeded", "failed", "aborted", "expired"]
    assert len(run_ids(env, tmp_path)) == 5  # a dry run deletes nothing

    out = cli_ok("gc", "--older-than", "1h", "--status", "failed", env=env, cwd=tmp_path)
    assert out.startswith("deleted 1 run (failed) last updated before ")
    assert run_ids(env, tmp_path) == {"q1", "q2", "w1", "a1"}
    assert journal_of(env, "q1") > 0
    out = cli_ok("gc", "--older-than", "3h", env=env, cwd=tmp_path)
    assert out.startswith("deleted 0 runs")
    out = cli_ok("gc", "--older-than", "90m", env=env, cwd=tmp_path)
    assert out.startswith("deleted 2 runs (succeeded, failed, aborted, expired) ")
    assert run_ids(env, tmp_path) == {"q2", "w1"}  # the paused run stays, however old
    assert journal_of(env, "q1") == journal_of(env, "a1") == 0
    one_line_error(cli("logs", "q1", env=env, cwd=tmp_path), "run 'q1' is not in this store")


def test_gc_refuses_what_it_cannot_do(tmp_path):
    env = cli_env(f"sqlite:///{tmp_path / 'runs.db'}")
    cases = [
        (("--older-than", "7 days"), "--older-than must be a number and a unit"),
        (("--older-than", "10"), "e.g. 30s, 15m, 12h, 7d"),
        (("--older-than", "-1h"), "got '-1h'"),
        (("--older-than", "1d", "--status", "paused"), "paused runs are never deleted"),
        (("--older-than", "1d", "--status", "failed,quarantined"), "quarantined runs are never"),
        (("--older-than", "1d", "--status", "done"), "unknown status 'done'"),
        (("--older-than", "1d", "--status", ","), "names no status"),
    ]
    for args, message in cases:
        one_line_error(cli("gc", *args, env=env, cwd=tmp_path), message)
    assert cli("gc", env=env, cwd=tmp_path).returncode == 2  # --older-than is required
    one_line_error(cli("serve", "shop:app", "--retain", "soon", env=env, cwd=tmp_path),
                   "--retain must be a number and a unit")  # fmt: skip
    assert not (tmp_path / "runs.db").exists()


def test_serve_retain_deletes_finished_runs_as_it_goes(env, tmp_path):
    make_runs(env, tmp_path)
    age(env, ("q1", "w1"), 7200)
    daemon = Daemon("shop:app", env, tmp_path, "--retain", "1h", "--lease-ttl", "0.5")
    try:
        daemon.expect("daemon:deleted_runs", runs=1)  # at start: q1
        assert run_ids(env, tmp_path) == {"q2", "f1", "w1", "a1"}
        age(env, ("q2", "f1", "a1"), 7200)
        daemon.expect("daemon:deleted_runs", runs=3)  # at its next pass
        assert run_ids(env, tmp_path) == {"w1"}
        assert daemon.signal(signal.SIGTERM) == 0
    finally:
        daemon.stop()


def test_durations():
    assert [parse_duration(t) for t in ("30s", "15m", "12h", "7d", "1w", "1.5h", " 2D ")] == [
        30.0, 900.0, 43_200.0, 604_800.0, 604_800.0, 5400.0, 172_800.0,
    ]  # fmt: skip
    for bad in ("", "7", "d", "7x", "-1s", "1h30m", "7 days", "1e3s", "nan s"):
        with pytest.raises(DurationError, match="a number and a unit"):
            parse_duration(bad, "--older-than")
