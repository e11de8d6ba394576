"""Stores in a fleet (SPEC 16): one bad row never stops the others, what the store could
not read back is never written, stores are opened without being created, the durable
abort flag, and commits refused for good.

Damage is written with raw SQL (sqlite3 or psycopg straight into the store's tables), as
a disk error, a bad restore or a hand edit would leave it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cbor2
import pytest
from conftest import drop_schema, empty_pg_store

from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.errors import CommitRefused, RunAborted, RunNotFound, StoreError
from stageline.core.events import Event, PathNode
from stageline.core.mailbox import FAILED, Request
from stageline.core.store import Commit, RunRecord
from stageline.stores import MemoryStore, PostgresStore, SqliteStore
from stageline.stores.url import open_store

pytestmark = pytest.mark.timeout(60)

GARBAGE = {
    "not cbor": b"\xff\xfe\x00garbage",
    "not a mapping": cbor2.dumps([1, 2, 3]),
    "a refused tag": cbor2.dumps(cbor2.CBORTag(5, [1, 2])),
}


class Raw:
    """Plain SQL on a store's own tables: `{t}` is the table prefix, `?` a parameter."""

    def __init__(self, conn: Any, prefix: str, mark: str) -> None:
        self.conn, self.prefix, self.mark = conn, prefix, mark

    @classmethod
    def sqlite(cls, path: str) -> Raw:
        return cls(sqlite3.connect(path, isolation_level=None), "", "?")

    @classmethod
    def postgres(cls, dsn: str, schema: str) -> Raw:
        import psycopg

        return cls(psycopg.connect(dsn, autocommit=True), f'"{schema}".', "%s")

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> Any:
        text = statement.replace("{t}", self.prefix).replace("?", self.mark)
        return self.conn.execute(text, params)

    def close(self) -> None:
        self.conn.close()


def record(run_id: str, status: str = "running", **fields: Any) -> RunRecord:
    now = time.time()
    values: dict[str, Any] = {"state": {"n": 1}, "stage": "s1", "created_at": now}
    values.update(fields)
    return RunRecord(run_id, "p", 1, status, updated_at=now, **values)


def stage_commit(run: RunRecord, status: str = "running", **fields: Any) -> Commit:
    seq = run.last_seq + 1
    event = Event("stage:success", run.run_id, (PathNode("p", "s1"),), seq, 0.0, stage_id="s1")
    values: dict[str, Any] = {
        "run_id": run.run_id,
        "expected_version": run.version,
        "status": status,
        "stage": "s1",
        "state": {"n": run.state.get("n", 0) + 1},
        "last_seq": seq,
        "stage_runs": run.stage_runs + 1,
        "updated_at": time.time(),
        "events": (event,),
    }
    values.update(fields)
    return Commit(**values)


def request(n: int, **fields: Any) -> Request:
    return Request(f"req-{n}", "resume", f"run-{n}", posted_at=float(n), **fields)


# ------------------------------------------------------------------- one bad row


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_a_damaged_state_is_listed_as_corrupt_beside_healthy_runs(sql_store, garbage, caplog):
    store, raw = sql_store
    for run_id, status in (("r1", "running"), ("r2", "running"), ("r3", "succeeded")):
        store.create_run(record(run_id, status, created_at=float(run_id[1])))
    raw.execute("UPDATE {t}runs SET state = ? WHERE run_id = 'r2'", (GARBAGE[garbage],))
    with caplog.at_level(logging.WARNING, logger="stageline"):
        listed = store.list_runs()
    assert [(r.run_id, r.status) for r in listed] == [
        ("r1", "running"),
        ("r2", lifecycle.CORRUPT),
        ("r3", "succeeded"),
    ]
    damaged = listed[1]
    assert (damaged.pipeline_id, damaged.stage, damaged.state) == ("p", "s1", {})
    assert damaged.checkpoint is None and damaged.updated_at.timestamp() > 0
    assert damaged.error["kind"] == "corrupt"
    assert "'r2'" in damaged.error["message"] and "state" in damaged.error["message"]
    assert "Delete the run's row" in damaged.error["message"]
    assert any("'r2' is damaged" in r.getMessage() for r in caplog.records)
    running = store.list_runs(status="running")  # the status column still filters
    assert [(r.run_id, r.status) for r in running] == [("r1", "running"), ("r2", "corrupt")]
    for read in (store.get_run, store.load_run):
        with pytest.raises(StoreError, match=r"run 'r2' is damaged in this store: its state"):
            read("r2")
    assert store.get_run("r1").state == {"n": 1}  # the others read as ever


def test_sqlite_columns_of_the_wrong_type_are_corrupt_not_a_crash(tmp_path):
    """SQLite keeps whatever a hand edit puts in a column: text where a time or a version
    should be is damage like any other."""
    store = SqliteStore(tmp_path / "runs.db")
    for n in (1, 2, 3):
        store.create_run(record(f"r{n}", created_at=float(n)))
    raw = Raw.sqlite(store.path)
    raw.execute("UPDATE runs SET updated_at = 'yesterday' WHERE run_id = 'r1'")
    raw.execute("UPDATE runs SET version = 'v2' WHERE run_id = 'r2'")
    raw.execute("UPDATE runs SET updated_at = 1e300 WHERE run_id = 'r3'")
    raw.close()
    listed = store.list_runs()
    assert [r.status for r in listed] == ["corrupt"] * 3
    assert "update time" in listed[0].error["message"] and listed[0].updated_at.year == 1970
    assert "version" in listed[1].error["message"]
    assert "times cannot be read" in listed[2].error["message"]
    with pytest.raises(StoreError, match="run 'r3' is damaged"):
        store.get_run("r3")
    store.close()


def test_a_damaged_error_record_still_loads_lists_and_aborts(sql_store):
    store, raw = sql_store
    store.create_run(record("running"))
    store.create_run(record("paused", "paused", created_at=1.0))
    store.create_run(record("failed", "failed", created_at=2.0))
    raw.execute("UPDATE {t}runs SET error = ?", (b"\xff\xff not cbor",))
    for run_id in ("running", "paused", "failed"):
        loaded = store.load_run(run_id)  # what an abort (or a retry) reads first
        assert loaded.error["kind"] == "corrupt" and repr(run_id) in loaded.error["message"]
        assert store.get_run(run_id).error == loaded.error
    assert [r.status for r in store.list_runs()] == ["paused", "failed", "running"]
    assert store.request_abort("running", "ops")  # aborting a running run reads no error
    paused = store.load_run("paused")
    store.commit(tr.abort_paused(paused, time.time(), RunAborted("by ops")))
    aborted = store.get_run("paused")
    assert aborted.status == "aborted" and aborted.error["message"] == "by ops"


# ------------------------------------------------------------------- the mailbox


@pytest.mark.parametrize("damage", ["args", "kind"])
def test_an_unreadable_request_is_answered_failed_and_the_rest_are_claimed(
    sql_store, damage, caplog
):
    store, raw = sql_store
    for n in range(10):
        store.post_request(request(n, args={"patch": {"n": n}}))
    if damage == "args":
        raw.execute("UPDATE {t}requests SET args = ? WHERE request_id = 'req-4'", (b"\xff",))
    else:
        raw.execute("UPDATE {t}requests SET kind = 'teleport' WHERE request_id = 'req-4'")
    before = store.mailbox_version()
    with caplog.at_level(logging.WARNING, logger="stageline"):
        claimed = store.claim_requests("daemon", limit=16)
    assert [r.request_id for r in claimed] == [f"req-{n}" for n in range(10) if n != 4]
    assert [r.args for r in claimed][:4] == [{"patch": {"n": n}} for n in range(4)]
    answered = store.get_request("req-9")  # the others are claimed, untouched
    assert answered.status == "claimed"
    row = raw.execute(
        "SELECT status, answer, answered_at FROM {t}requests WHERE request_id = 'req-4'"
    ).fetchone()
    assert row[0] == FAILED and row[2] is not None
    assert "'req-4' could not be read" in row[1] and "post it again" in row[1]
    assert any("'req-4' could not be read" in r.getMessage() for r in caplog.records)
    assert store.mailbox_version() != before  # the answer is news for its sender
    assert store.claim_requests("daemon") == []  # nothing is left to claim


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_request_over_the_limit_is_refused_and_the_mailbox_stays_readable(kind, make_store):
    store = make_store(kind, max_state_bytes=10_000)
    big = request(1, args={"patch": {"blob": b"x" * 20_000}})
    with pytest.raises(StoreError, match=r"over this store's limit of 10000 bytes"):
        store.post_request(big)
    with pytest.raises(StoreError, match="not in this store"):
        store.get_request("req-1")  # nothing was written
    store.post_request(request(2, args={"patch": {"blob": b"x" * 5_000}}))
    assert [r.request_id for r in store.claim_requests("d")] == ["req-2"]


def test_the_default_limit_is_the_decoders(tmp_path):
    """At the default max_state_bytes a request just over core's decode cap (64 MiB) is
    refused when posted, not written for every daemon to fail on."""
    store = SqliteStore(tmp_path / "runs.db")
    big = request(1, args={"patch": {"blob": b"x" * DEFAULT_MAX_BYTES}})
    with pytest.raises(StoreError, match=f"limit of {DEFAULT_MAX_BYTES} bytes"):
        store.post_request(big)
    del big
    store.post_request(request(2))
    assert [r.request_id for r in store.claim_requests("d")] == ["req-2"]
    store.close()


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Make a SQL store of a kind with options; closed (and its schema dropped) after."""
    made: list[Any] = []

    def make(kind: str, **options: Any) -> Any:
        if kind == "sqlite":
            store: Any = SqliteStore(tmp_path / f"s{len(made)}.db", **options)
        else:
            dsn, schema = request.getfixturevalue("pg_dsn"), f"fleet_{uuid.uuid4().hex[:10]}"
            request.addfinalizer(lambda: drop_schema(dsn, schema))
            store = PostgresStore(dsn, schema=schema, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


# ------------------------------------------------------------------- opening


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("name", ["file:x.db", "file:y.db?mode=memory&cache=shared"])
def test_a_file_colon_name_is_a_plain_owner_only_file(tmp_path, monkeypatch, name):
    """Was: a path starting with `file:` was handed to SQLite as a URI (its options
    obeyed: `mode=memory` kept nothing) and skipped the owner-only creation."""
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)  # a permissive umask would make 0644 files
    try:
        for run_id, store in (("r1", SqliteStore(name)), ("r2", open_store(f"sqlite:///{name}"))):
            store.create_run(record(run_id))
            files = {p.name: mode(p) for p in tmp_path.iterdir()}
            assert files == dict.fromkeys([name, f"{name}-wal", f"{name}-shm"], 0o600)
            store.close()
    finally:
        os.umask(old)
    again = SqliteStore(tmp_path / name, create=False)
    try:
        assert [r.run_id for r in again.list_runs()] == ["r1", "r2"]
    finally:
        again.close()


def test_create_false_on_a_missing_sqlite_file_names_it_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absent = tmp_path / "runs.db"
    for opening in (
        lambda: SqliteStore("runs.db", create=False),
        lambda: open_store("sqlite:///runs.db", create=False),
        lambda: open_store("runs.db", create=False),
    ):
        with pytest.raises(StoreError) as caught:
            opening()
        message = str(caught.value)
        assert f"no stageline store at {absent};" in message
        assert "start `stageline serve` on it first or check the path" in message
        assert list(tmp_path.iterdir()) == []  # no file, no -wal, no -shm
    absent.touch()  # a file that is not a store (yet) is not made one either
    with pytest.raises(StoreError, match="the file has no stageline tables"):
        SqliteStore(absent, create=False)
    assert [p.name for p in tmp_path.iterdir()] == ["runs.db"] and absent.stat().st_size == 0
    absent.unlink()
    SqliteStore(absent).close()  # made by `serve`: then opened without creating
    with contextlib.closing(SqliteStore(absent, create=False)) as store:
        store.create_run(record("r1"))
        assert store.get_run("r1").status == "running"
    assert isinstance(open_store("memory://", create=False), MemoryStore)


def test_create_false_on_a_missing_postgres_schema_names_it_and_creates_nothing(pg_dsn):
    import psycopg

    schema = f"fleet_{uuid.uuid4().hex[:10]}"
    url = f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}schema={schema}"
    try:
        for opening in (
            lambda: PostgresStore(pg_dsn, schema=schema, create=False),
            lambda: open_store(url, create=False),
        ):
            with pytest.raises(StoreError, match=f"no stageline store at .*schema '{schema}'"):
                opening()
            with psycopg.connect(pg_dsn) as conn:
                found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
                assert found.fetchone() is None
        PostgresStore(pg_dsn, schema=schema).close()  # `serve` creates it
        with contextlib.closing(PostgresStore(pg_dsn, schema=schema, create=False)) as store:
            store.create_run(record("r1"))
            assert store.get_run("r1").status == "running"
    finally:
        drop_schema(pg_dsn, schema)


# ------------------------------------------------------------------- abort flags


def test_the_abort_flag_is_set_on_active_runs_read_in_one_call_and_cleared_at_the_end(store):
    store.create_run(record("run"))
    store.create_run(record("pending", "pending"))
    store.create_run(record("paused", "paused"))
    assert store.abort_requests(["run", "pending", "paused", "nobody"]) == {}
    assert store.request_abort("run", "stuck") is True
    assert store.request_abort("pending", None) is True
    assert store.request_abort("paused", "late") is False  # only pending or running runs
    with pytest.raises(RunNotFound):
        store.request_abort("nobody", "x")
    flags = store.abort_requests(["run", "pending", "paused", "nobody"])
    assert flags == {"run": "stuck", "pending": None}
    run = store.load_run("run")
    assert run.version == 0  # the flag is no stage commit: no conflict with the owner
    store.commit(stage_commit(run))  # the run goes on: the flag stays
    assert store.abort_requests(["run"]) == {"run": "stuck"}
    run = store.load_run("run")
    store.commit(stage_commit(run, "aborted"))  # the commit that ends it clears it
    pending = store.load_run("pending")
    store.commit(stage_commit(pending, "paused"))  # and so does a pause
    assert store.abort_requests(["run", "pending"]) == {}
    assert store.request_abort("run", "again") is False


def test_an_abort_flag_wakes_a_postgres_daemon_waiting_for_posts(pg_dsn, pg_schema):
    daemon, other = empty_pg_store(pg_dsn, pg_schema), PostgresStore(pg_dsn, schema=pg_schema)
    try:
        other.create_run(record("r1"))
        assert daemon.wait_for_requests(timeout=5, answers=False) is True  # starts listening
        woke: list[tuple[bool, float]] = []

        def wait() -> None:
            started = time.monotonic()
            woke.append((daemon.wait_for_requests(timeout=30, answers=False), started))

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert other.request_abort("r1", "ops")
        waiter.join(timeout=30)
        [(changed, started)] = woke
        assert changed and time.monotonic() - started < 10  # the NOTIFY, not the timeout
        assert daemon.abort_requests(["r1"]) == {"r1": "ops"}
    finally:
        daemon.close()
        other.close()


# ------------------------------------------------------------------- refused commits


def test_postgres_refuses_a_nul_in_a_stage_id_for_good_and_writes_nothing(pg_dsn, pg_schema):
    store = empty_pg_store(pg_dsn, pg_schema)
    try:
        store.create_run(record("r1"))
        run = store.load_run("r1")
        with pytest.raises(CommitRefused, match=r"stage id 's\\x00' of run 'r1'.*NUL"):
            store.commit(stage_commit(run, stage="s\x00"))
        with pytest.raises(CommitRefused, match="NUL"):
            store.create_run(record("r2", stage="s\x00"))
        assert store.load_run("r1") == run and store.read_events("r1") == []
        assert [r.run_id for r in store.list_runs()] == ["r1"]
        # state is CBOR in a bytea column: a NUL in its text is held and read back
        store.commit(stage_commit(run, state={"text": "a\x00b"}))
        assert store.get_run("r1").state == {"text": "a\x00b"}
    finally:
        store.close()


def test_values_the_database_refuses_are_commit_refused_and_write_nothing(sql_store):
    """Refusals made by the database itself, not by the store's own checks: a number out
    of the column's range (PostgreSQL SQLSTATE 22003; SQLite cannot bind it) and a
    journal seq already taken (a primary key, class 23)."""
    store, _ = sql_store
    store.create_run(record("r1"))
    run = store.load_run("r1")
    store.commit(stage_commit(run))
    run = store.load_run("r1")
    with pytest.raises(CommitRefused, match=r"committing run 'r1' was refused by .*nothing was"):
        store.commit(stage_commit(run, stage_runs=2**63))
    taken = stage_commit(run)
    event = replace(taken.events[0], seq=1)  # seq 1 is in the journal already
    with pytest.raises(CommitRefused, match="committing run 'r1' was refused"):
        store.commit(replace(taken, events=(event,), last_seq=1))
    assert store.load_run("r1") == run  # nothing was written
    assert [e.seq for e in store.read_events("r1")] == [1]
    assert store.commit(stage_commit(run)) == run.version + 1  # the store goes on


def test_text_no_store_can_hold_is_refused_for_good(sql_store):
    """A stage id that is not valid Unicode (a lone surrogate, from bytes that were not
    UTF-8) can never be stored: refused for good, on both SQL stores."""
    store, _ = sql_store
    store.create_run(record("r1"))
    run = store.load_run("r1")
    with pytest.raises(CommitRefused, match="not valid Unicode"):
        store.commit(stage_commit(run, stage="s\udcff"))
    with pytest.raises(CommitRefused, match="not valid Unicode"):
        store.create_run(record("r2", stage="s\udcff"))
    assert store.load_run("r1") == run and [r.run_id for r in store.list_runs()] == ["r1"]


def test_sqlite_transient_failures_stay_plain_store_errors(tmp_path):
    store = SqliteStore(tmp_path / "runs.db", busy_timeout=0.05)
    store.create_run(record("r1"))
    run = store.load_run("r1")
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked") as caught:
            store.commit(stage_commit(run))
        assert not isinstance(caught.value, CommitRefused)
    finally:
        other.execute("ROLLBACK")
        other.close()
    store._db.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="readonly") as caught:
        store.commit(stage_commit(run))
    assert not isinstance(caught.value, CommitRefused)
    store._db.execute("PRAGMA query_only = OFF")
    assert store.commit(stage_commit(run)) == 1
    store.close()


def test_a_lost_postgres_connection_stays_a_plain_store_error(pg_dsn, pg_schema):
    import psycopg

    name = f"fleet_{uuid.uuid4().hex[:10]}"  # this test's connections, and only them
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, application_name=name)
    empty_pg_store(pg_dsn, pg_schema).close()
    store = PostgresStore(dsn, schema=pg_schema, min_size=1, max_size=1, check_after=None)
    try:
        store.create_run(record("r1"))
        run = store.load_run("r1")
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (name,),
            )
        with pytest.raises(StoreError, match="connection") as caught:
            store.commit(stage_commit(run))
        assert not isinstance(caught.value, CommitRefused)
        assert store.commit(stage_commit(run)) == 1  # a new connection: committed
    finally:
        store.close()
