"""Operating a fleet: the mailbox listed and cancelled, daemons' heartbeats, `stageline status`.

Store methods run on every store (the `store` fixture); the commands run through the real
console script on SQLite and PostgreSQL. The daemon's heartbeat cadence is driven by a
ManualClock (no sleeps); a daemon subprocess is followed through its log lines.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from cli_helpers import Daemon, cli, cli_env, cli_ok  # tests/ is on sys.path

from stageline import ManualClock, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.core.errors import StoreError
from stageline.core.mailbox import CLAIMED, DONE, FAILED, PENDING, Request
from stageline.daemon import Daemon as DaemonLoop
from stageline.daemon import DaemonOptions, bind_factories
from stageline.stores import MemoryStore, SqliteStore
from stageline.stores.sqlite import MIGRATIONS, SCHEMA_VERSION
from stageline.stores.url import open_store

pytestmark = pytest.mark.timeout(60)

APP = """
from stageline import Pipeline, Stage, Step

hello = Pipeline("hello", [Stage("greet", order=1, steps=[Step("greet", lambda s, c: {"hi": 1})])])
"""


def request(n: int, kind: str = "retry") -> Request:
    return Request(f"req-{n}", kind, f"run-{n}", posted_at=1000.0 + n)


def beat(owner: str, beat_at: float, runs: int = 0, lease_ttl: float = 30.0) -> dict:
    return {"owner": owner, "pid": 42, "host": "box", "started_at": 900.0,
            "beat_at": beat_at, "runs": runs, "lease_ttl": lease_ttl}  # fmt: skip


# --- the store API, on every store ------------------------------------------------------------


def test_requests_are_listed_newest_first_and_filtered(store):
    for n in range(4):
        store.post_request(request(n))
    [claimed] = store.claim_requests("d1", limit=1)
    store.answer_request(store.claim_requests("d1", limit=1)[0].request_id)
    ids = [r.request_id for r in store.list_requests()]
    assert ids == ["req-3", "req-2", "req-1", "req-0"]
    assert [r.request_id for r in store.list_requests(limit=2)] == ["req-3", "req-2"]
    assert [r.request_id for r in store.list_requests(PENDING)] == ["req-3", "req-2"]
    assert [(r.request_id, r.claimed_by) for r in store.list_requests(CLAIMED)] == [
        (claimed.request_id, "d1")
    ]
    assert [r.status for r in store.list_requests("answered")] == [DONE]
    with pytest.raises(ValueError, match="pending, claimed, answered"):
        store.list_requests("lost")


def test_cancel_answers_only_a_pending_request(store):
    for n in range(3):
        store.post_request(request(n))
    store.claim_requests("d1", limit=1)  # req-0
    version = store.mailbox_version()
    assert store.cancel_request("req-1") is True
    cancelled = store.get_request("req-1")
    assert (cancelled.status, cancelled.answer) == (FAILED, "cancelled by an operator")
    assert cancelled.answered_at is not None and store.mailbox_version() != version
    assert store.cancel_request("req-1") is False  # answered already
    assert store.cancel_request("req-0") is False  # claimed: the daemon acts on it
    assert store.get_request("req-0").status == CLAIMED
    assert [r.request_id for r in store.claim_requests("d2")] == ["req-2"]  # not req-1
    with pytest.raises(StoreError, match="'ghost' is not in this store"):
        store.cancel_request("ghost")


def test_cancel_races_a_claim_and_exactly_one_wins(store):
    for n in range(20):
        store.post_request(request(n))
    outcomes: dict[str, bool] = {}
    claimed: list[str] = []
    gate = threading.Barrier(2)

    def cancel_all() -> None:
        gate.wait()
        for n in range(20):
            outcomes[f"req-{n}"] = store.cancel_request(f"req-{n}")

    def claim_all() -> None:
        gate.wait()
        while batch := store.claim_requests("d1", limit=1):
            claimed.extend(r.request_id for r in batch)

    threads = [threading.Thread(target=cancel_all), threading.Thread(target=claim_all)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    cancelled = {rid for rid, won in outcomes.items() if won}
    assert cancelled.isdisjoint(claimed) and cancelled | set(claimed) == set(outcomes)


def test_heartbeats_are_replaced_by_owner_and_removed(store):
    store.record_heartbeat(beat("b", 1000.0))
    store.record_heartbeat(beat("a", 1000.0))
    store.record_heartbeat(beat("a", 1010.0, runs=3))
    assert store.list_heartbeats() == [beat("a", 1010.0, runs=3), beat("b", 1000.0)]
    store.remove_heartbeat("a")
    store.remove_heartbeat("nobody")
    assert store.list_heartbeats() == [beat("b", 1000.0)]
    with pytest.raises(ValueError, match="lease_ttl"):
        store.record_heartbeat({k: v for k, v in beat("c", 1.0).items() if k != "lease_ttl"})


def test_a_version_4_sqlite_file_is_migrated_to_hold_heartbeats(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE stageline_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for version in range(1, 5):
        for statement in MIGRATIONS[version]:
            db.execute(statement)
    db.execute("INSERT INTO stageline_meta VALUES ('schema_version', '4')")
    db.commit()
    db.close()
    store = SqliteStore(path, create=False)
    try:
        store.record_heartbeat(beat("a", 1.0))
        assert store.list_heartbeats() == [beat("a", 1.0)]
    finally:
        store.close()
    assert SCHEMA_VERSION >= 5


def test_a_version_4_postgres_schema_is_migrated_to_hold_heartbeats(pg_dsn):
    import uuid

    import psycopg
    from conftest import drop_schema

    from stageline.stores.postgres import MIGRATIONS as PG_MIGRATIONS
    from stageline.stores.postgres import PostgresStore

    schema = f"stageline_v4_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            conn.execute(f'CREATE TABLE "{schema}".stageline_meta (key text PRIMARY KEY, '
                         "value text NOT NULL)")  # fmt: skip
            for version in range(1, 5):
                for statement in PG_MIGRATIONS[version]:
                    conn.execute(statement.replace("{s}", f'"{schema}"'))
            conn.execute(f"INSERT INTO \"{schema}\".stageline_meta VALUES ('schema_version', '4')")
        store = PostgresStore(pg_dsn, schema=schema, min_size=0, create=False)
        try:
            store.record_heartbeat(beat("a", 1.0))
            assert store.list_heartbeats() == [beat("a", 1.0)]
        finally:
            store.close()
    finally:
        drop_schema(pg_dsn, schema)


# --- the daemon's heartbeat, by its clock ------------------------------------------------------


def test_the_daemon_beats_at_start_every_period_and_forgets_at_a_clean_stop():
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    quick = Pipeline("quick", [Stage("one", order=1, steps=[Step("one", lambda s, c: {})])])
    with Registry(clock=clock, lease_ttl=30.0) as registry:
        options = DaemonOptions(recover_every=30.0, heartbeat_every=10.0)
        daemon = DaemonLoop(
            bind_factories([PipelineFactory(quick)], store, registry), store, registry, options
        )
        daemon.start()
        [first] = store.list_heartbeats()
        assert first["owner"] == daemon.name and first["lease_ttl"] == 30.0
        assert first["beat_at"] == first["started_at"] == clock.wall() and first["runs"] == 0
        stop = threading.Event()
        polled = threading.Event()
        store.mailbox_version = lambda: polled.set() or 0  # type: ignore[method-assign]
        serving = threading.Thread(target=daemon.serve, args=(stop,))
        serving.start()
        try:
            for _ in range(2):
                polled.clear()
                assert polled.wait(10)
            assert store.list_heartbeats()[0]["beat_at"] == first["beat_at"]  # not due yet
            clock.advance(10.0)
            for _ in range(2):  # a pass after the advance has run
                polled.clear()
                assert polled.wait(10)
            assert store.list_heartbeats()[0]["beat_at"] == first["beat_at"] + 10.0
        finally:
            stop.set()
            serving.join(10)
        daemon.forget()
        assert store.list_heartbeats() == []


# --- the commands, through the console script ------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "shop.py").write_text(APP)
    if request.param == "postgres":
        return cli_env(request.getfixturevalue("pg_url"), tmp_path)
    return cli_env(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)


def posted(env: dict[str, str], cwd: Path, count: int) -> list[str]:
    """Post `count` start requests (no daemon), oldest first; their request ids."""
    ids = []
    for _ in range(count):
        out = cli_ok("start", "hello", "--no-wait", "--json", env=env, cwd=cwd)
        ids.append(json.loads(out)["request_id"])
    return ids


def test_requests_lists_and_cancels(env, tmp_path):
    first, second, third = posted(env, tmp_path, 3)
    store = open_store(env["STAGELINE_STORE"])
    try:
        assert [r.request_id for r in store.claim_requests("daemon-x", 1)] == [first]
    finally:
        store.close()
    rows = [json.loads(line) for line in cli_ok("requests", "--json", env=env, cwd=tmp_path)
            .splitlines()]  # fmt: skip
    assert [r["request_id"] for r in rows] == [third, second, first]
    assert rows[2]["status"] == "claimed" and rows[2]["claimed_by"] == "daemon-x"
    assert rows[0]["kind"] == "start" and rows[0]["pipeline_id"] == "hello"
    assert rows[0]["posted_at"].endswith("Z")
    table = cli_ok("requests", env=env, cwd=tmp_path).splitlines()
    assert table[0].split()[:3] == ["REQUEST", "KIND", "RUN"] and len(table) == 4
    assert table[1].startswith(third) and "pending" in table[1]
    out = cli_ok("requests", "--cancel", second, env=env, cwd=tmp_path)
    assert out.startswith(f"cancelled start request {second} for run ")
    again = cli("requests", "--cancel", second, env=env, cwd=tmp_path)
    assert again.returncode == 1 and again.stderr == (
        f"stageline: error: request {second} is already answered (failed); nothing to cancel\n"
    )
    held = cli("requests", "--cancel", first, env=env, cwd=tmp_path)
    assert held.returncode == 1 and "claimed by daemon daemon-x" in held.stderr
    answered = cli_ok("requests", "--status", "answered", "--json", env=env, cwd=tmp_path)
    [row] = [json.loads(line) for line in answered.splitlines()]
    assert (row["request_id"], row["answer"]) == (second, "cancelled by an operator")
    pending = cli_ok("requests", "--status", "pending", env=env, cwd=tmp_path)
    assert third in pending and second not in pending and first not in pending


def test_status_shows_a_serving_daemon_and_none_after_it_stops(env, tmp_path):
    missing = cli("status", env=env, cwd=tmp_path)  # read-only: never creates the store
    assert missing.returncode == 1 and "no stageline store" in missing.stderr
    cli_ok("start", "hello", "--no-wait", env=env, cwd=tmp_path)  # creates it
    assert cli_ok("status", env=env, cwd=tmp_path) == "no daemon has served this store\n"
    daemon = Daemon("shop:hello", env, tmp_path, "--lease-ttl", "6")
    try:
        ready = daemon.expect("daemon:ready")
        [line] = cli_ok("status", "--json", env=env, cwd=tmp_path).splitlines()
        found = json.loads(line)
        assert found["owner"] == ready["daemon"] and found["pid"] == daemon.proc.pid
        assert found["lease_ttl"] == 6.0 and found["gone"] is False and found["runs"] >= 0
        text = cli_ok("status", env=env, cwd=tmp_path).splitlines()
        assert text[0].split() == ["DAEMON", "HOST", "PID", "STARTED", "LAST", "HEARTBEAT", "RUNS"]
        assert ready["daemon"] in text[1] and " s ago" in text[1] and "gone?" not in text[1]
        assert daemon.signal() == 0
    finally:
        daemon.stop()
    assert cli_ok("status", env=env, cwd=tmp_path) == "no daemon has served this store\n"


def test_status_marks_a_daemon_silent_for_three_leases_gone(env, tmp_path):
    cli_ok("start", "hello", "--no-wait", env=env, cwd=tmp_path)  # creates the store
    store = open_store(env["STAGELINE_STORE"])
    try:
        now = store.clock.wall()
        store.record_heartbeat(beat("old", now - 100.0, lease_ttl=30.0))
        store.record_heartbeat(beat("slow", now - 80.0, lease_ttl=30.0))
    finally:
        store.close()
    text = cli_ok("status", env=env, cwd=tmp_path).splitlines()
    old, slow = (line for line in text[1:])
    assert old.startswith("old") and "gone?" in old and "10" in old
    assert slow.startswith("slow") and "gone?" not in slow
    rows = [json.loads(x) for x in cli_ok("status", "--json", env=env, cwd=tmp_path).splitlines()]
    assert [(r["owner"], r["gone"]) for r in rows] == [("old", True), ("slow", False)]
