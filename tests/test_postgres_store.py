"""PostgresStore on a real server: CAS races, schema versions, lost connections, odd ids.

The whole store-parametrized suite also runs on PostgreSQL (see conftest.py); these are
the cases only a shared SQL server has. Each test that needs its own tables gets a fresh
schema, dropped afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import drop_schema

from stageline import Pipeline, PipelineFactory, Registry, Stage, Step, StoreError
from stageline.core.codec import encode
from stageline.core.errors import ConflictError, RunExistsError, RunNotFound
from stageline.core.events import Event, PathNode
from stageline.core.mailbox import Request
from stageline.core.store import Commit, RunRecord
from stageline.stores import PostgresStore
from stageline.stores.postgres import MIGRATIONS, SCHEMA_VERSION

psycopg = pytest.importorskip("psycopg", reason="needs the postgres extra")
sql = psycopg.sql

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A schema name of this test's own; dropped at the end."""
    name = f"stageline_t_{uuid.uuid4().hex[:12]}"
    yield name
    drop_schema(pg_dsn, name)


@pytest.fixture
def admin(pg_dsn: str) -> Iterator[Any]:
    """A plain autocommit connection, outside any store."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def watcher(pg_dsn: str) -> Iterator[Any]:
    """Another one, to watch pg_stat_activity while `admin` holds a transaction open
    (inside a transaction, pg_stat_activity is a snapshot that does not move)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def record(run_id: str, pipeline_id: str = "p") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        pipeline_id=pipeline_id,
        pipeline_version=1,
        status="running",
        state={"n": 0},
        stage="s1",
        created_at=time.time(),
        updated_at=time.time(),
    )


def stage_commit(run: RunRecord, n: int, writer: str) -> Commit:
    seq = run.last_seq + 1
    event = Event(
        "stage:success", run.run_id, (PathNode(run.pipeline_id, "s1"),), seq, 0.0, stage_id="s1"
    )
    return Commit(
        run_id=run.run_id,
        expected_version=run.version,
        status="running",
        stage="s1",
        state={"n": n, "writer": writer},
        last_seq=seq,
        stage_runs=run.stage_runs + 1,
        updated_at=time.time(),
        events=(event,),
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll a database condition (each poll is a round trip; no sleeping)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


def waiting_on_lock(admin: Any, schema: str) -> list[int]:
    """Backend pids of statements on `schema` that wait for a lock."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND position(%s in query) > 0",
        (schema,),
    ).fetchall()
    return [row[0] for row in rows]


# --------------------------------------------------------------------------- CAS races


def test_racing_commits_of_one_version_exactly_one_wins(pg_dsn, schema, admin, watcher):
    """Writers in separate stores (as separate processes would be), held at the row lock
    until all of them are queued, then released at once: one commits, the others conflict."""
    writers = 4
    stores = [PostgresStore(pg_dsn, schema=schema) for _ in range(writers)]
    try:
        run = record("race")
        stores[0].create_run(run)
        outcomes: dict[int, Any] = {}

        def write(i: int) -> None:
            try:
                outcomes[i] = stores[i].commit(stage_commit(run, i, f"w{i}"))
            except Exception as exc:  # recorded and judged below
                outcomes[i] = exc

        with admin.transaction():
            table = sql.SQL("{}.runs").format(sql.Identifier(schema))
            admin.execute(
                sql.SQL("SELECT 1 FROM {} WHERE run_id = 'race' FOR UPDATE").format(table)
            )
            threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
            for t in threads:
                t.start()
            wait_until(lambda: len(waiting_on_lock(watcher, schema)) == writers, "queued writers")
        for t in threads:
            t.join(timeout=20)
        winners = [i for i, o in outcomes.items() if o == 1]
        losers = [o for o in outcomes.values() if o != 1]
        assert len(winners) == 1, outcomes
        assert len(losers) == writers - 1
        assert all(type(o) is ConflictError for o in losers), losers  # not a PK violation
        stored = stores[1].load_run("race")
        assert stored.version == 1 and stored.state["writer"] == f"w{winners[0]}"
        assert [e.seq for e in stores[2].read_events("race")] == [1]  # losers wrote no events
    finally:
        for s in stores:
            s.close()


def test_many_rounds_of_racing_threads_keep_one_history(store_on_schema):
    store = store_on_schema(max_size=4)
    store.create_run(record("rounds"))
    rounds, writers = 15, 4
    for n in range(rounds):
        current = store.load_run("rounds")
        barrier = threading.Barrier(writers)
        outcomes: list[Any] = []

        def write(
            i: int, current: RunRecord = current, n: int = n, barrier=barrier, outcomes=outcomes
        ) -> None:
            barrier.wait()
            try:
                outcomes.append(store.commit(stage_commit(current, n, f"w{i}")))
            except Exception as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert sorted(o for o in outcomes if isinstance(o, int)) == [n + 1], outcomes
        assert sum(type(o) is ConflictError for o in outcomes) == writers - 1, outcomes
    final = store.load_run("rounds")
    assert final.version == rounds and final.last_seq == rounds
    assert [e.seq for e in store.read_events("rounds")] == list(range(1, rounds + 1))


@pytest.fixture
def store_on_schema(pg_dsn: str, schema: str) -> Iterator[Callable[..., PostgresStore]]:
    """Make PostgresStores on this test's schema; all closed at the end."""
    made: list[PostgresStore] = []

    dsn = psycopg.conninfo.make_conninfo(pg_dsn, application_name=schema)

    def make(**options: Any) -> PostgresStore:
        made.append(PostgresStore(dsn, schema=schema, **options))
        return made[-1]

    yield make
    for s in made:
        s.close()


# --------------------------------------------------------------------------- schema


def test_schema_is_created_once_by_processes_starting_together(pg_dsn, schema, admin):
    starters = 6
    barrier = threading.Barrier(starters)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            PostgresStore(pg_dsn, schema=schema, min_size=0).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    tables = admin.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY table_name",
        (schema,),
    ).fetchall()
    assert [t[0] for t in tables] == [
        "admissions", "claims", "daemons", "events", "requests", "runs", "schedules",
        "stageline_meta",
    ]  # fmt: skip
    meta = sql.SQL("SELECT key, value FROM {}.stageline_meta").format(sql.Identifier(schema))
    assert admin.execute(meta).fetchall() == [("schema_version", str(SCHEMA_VERSION))]


def test_a_newer_schema_version_is_refused(pg_dsn, schema, admin):
    PostgresStore(pg_dsn, schema=schema, min_size=0).close()
    admin.execute(
        sql.SQL("UPDATE {}.stageline_meta SET value = '99' WHERE key = 'schema_version'").format(
            sql.Identifier(schema)
        )
    )
    with pytest.raises(StoreError, match=r"schema version 99, newer .*upgrade stageline"):
        PostgresStore(pg_dsn, schema=schema)


def test_stores_on_other_schemas_do_not_see_each_others_runs(store_on_schema, pg_dsn):
    mine = store_on_schema()
    other_schema = f"stageline_t_{uuid.uuid4().hex[:12]}"
    other = PostgresStore(pg_dsn, schema=other_schema)
    try:
        mine.create_run(record("shared-name"))
        other.create_run(record("shared-name", pipeline_id="q"))
        assert mine.get_run("shared-name").pipeline_id == "p"
        assert other.get_run("shared-name").pipeline_id == "q"
    finally:
        other.close()
        drop_schema(pg_dsn, other_schema)


# --------------------------------------------------------------------------- connections


def store_pids(admin: Any, schema: str) -> list[int]:
    """Backend pids of the connections of stores made by `store_on_schema`."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (schema,)
    ).fetchall()
    return [row[0] for row in rows]


def test_connection_killed_mid_commit_raises_store_error_then_recovers(
    store_on_schema, schema, admin, watcher
):
    store = store_on_schema(min_size=1, max_size=1)
    store.create_run(record("victim"))
    run = store.load_run("victim")
    outcome: list[Any] = []

    def commit() -> None:
        try:
            outcome.append(store.commit(stage_commit(run, 1, "doomed")))
        except Exception as exc:
            outcome.append(exc)

    with admin.transaction():  # hold the row so the commit is caught mid-transaction
        table = sql.SQL("{}.runs").format(sql.Identifier(schema))
        admin.execute(sql.SQL("SELECT 1 FROM {} WHERE run_id = 'victim' FOR UPDATE").format(table))
        writer = threading.Thread(target=commit)
        writer.start()
        wait_until(lambda: len(waiting_on_lock(watcher, schema)) == 1, "the commit to block")
        [pid] = waiting_on_lock(watcher, schema)
        watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
        writer.join(timeout=20)
    [error] = outcome
    assert type(error) is StoreError, error
    message = str(error)
    assert "committing run 'victim'" in message and "connection" in message
    assert "retry" in message
    # nothing of the failed commit is stored, and the store serves the next calls
    assert store.load_run("victim").version == 0
    assert store.commit(stage_commit(run, 2, "after")) == 1
    assert store.get_run("victim").state == {"n": 2, "writer": "after"}


def test_idle_connection_closed_by_the_server_is_replaced(store_on_schema, schema, admin):
    store = store_on_schema(min_size=1, max_size=1, check_after=0.0)
    store.create_run(record("idle"))
    [pid] = store_pids(admin, schema)
    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert store.get_run("idle").status == "running"  # checked out, found dead, replaced
    assert store_pids(admin, schema) != [pid]


@pytest.mark.parametrize("check_after", [None, 3600.0])
def test_unchecked_dead_connection_fails_one_call(store_on_schema, schema, admin, check_after):
    store = store_on_schema(min_size=1, max_size=1, check_after=check_after)
    store.create_run(record("idle"))
    [pid] = store_pids(admin, schema)
    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreError, match=r"reading run 'idle' failed .*connection"):
        store.load_run("idle")
    assert store.get_run("idle").status == "running"


def test_a_dsn_that_is_not_one_is_refused():
    with pytest.raises(StoreError, match="cannot read the PostgreSQL dsn"):
        PostgresStore("host=localhost port")


def test_unreachable_server_is_a_clear_store_error_without_the_password():
    with pytest.raises(StoreError) as caught:
        PostgresStore("postgresql://postgres:s3cret@127.0.0.1:1/test", connect_timeout=2)
    message = str(caught.value)
    assert "cannot open the PostgreSQL store 127.0.0.1:1/test" in message
    assert "server is running" in message and "s3cret" not in message


def test_a_closed_store_refuses_calls(store_on_schema):
    store = store_on_schema()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        store.list_runs()


def test_bad_pool_sizes_are_refused(pg_dsn):
    with pytest.raises(StoreError, match="min_size <= max_size"):
        PostgresStore(pg_dsn, min_size=5, max_size=2)


def test_stores_import_without_the_postgres_extra(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None\n"
        "sys.modules['psycopg_pool'] = None\n"
        "from stageline import StoreError\n"
        "from stageline.stores import PostgresStore, SqliteStore\n"
        "try:\n"
        "    PostgresStore('postgresql://localhost/x')\n"
        "except StoreError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'stageline[postgres]'" in result.stdout


# --------------------------------------------------------------------------- odd ids

ODD_IDS = [
    "it's",
    "'; DROP TABLE runs; --",
    'quote"s and \\backslashes\\',
    "%s %(name)s {s} {}",
    "ünïcødé ✓ 日本",
    "x" * 2000,
]


@pytest.mark.parametrize("run_id", ODD_IDS, ids=lambda r: repr(r[:20]))
def test_odd_run_ids_round_trip_through_a_run(store_on_schema, run_id):
    store = store_on_schema()
    pipeline = Pipeline(
        "p'; --",
        [Stage("s'1", 1, steps=[Step("a", lambda s, c: {"q": "'\"; --"})])],
    )
    result = PipelineFactory(pipeline, store=store).prepare(run_id=run_id).run(timeout=10)
    assert result.ok
    info = store.get_run(run_id)
    assert info.run_id == run_id and info.state == {"q": "'\"; --"}
    assert [r.run_id for r in store.list_runs(pipeline_id="p'; --")] == [run_id]
    assert store.read_events(run_id)[-1].name == "pipeline:success"
    with pytest.raises(RunExistsError):
        store.create_run(record(run_id))


def test_ids_postgres_cannot_hold_are_refused_clearly(store_on_schema):
    store = store_on_schema()
    with pytest.raises(StoreError, match="NUL character"):
        store.create_run(record("nul\x00id"))
    with pytest.raises(StoreError, match="NUL character"):
        store.create_run(record("ok", pipeline_id="p\x00"))
    with pytest.raises(StoreError, match=r"4000 bytes in UTF-8; .* up to 2048 bytes"):
        store.create_run(record("é" * 2000))
    with pytest.raises(RunNotFound):
        store.get_run("nul\x00id")
    with pytest.raises(RunNotFound):
        store.read_events("nul\x00id")
    with pytest.raises(RunNotFound):
        store.set_checkpoint("nul\x00id", None, only_if_paused=False)
    with pytest.raises(ConflictError):
        store.commit(stage_commit(record("nul\x00id"), 1, "w"))
    assert store.list_runs(pipeline_id="p\x00") == []
    assert store.list_runs() == []


# --------------------------------------------------------------------------- mailbox


def mail(n: int, kind: str = "resume", **fields: Any) -> Request:
    return Request(f"req-{n}", kind, f"run-{n}", posted_at=float(n), **fields)


def listener_pids(admin: Any, schema: str) -> list[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
        (schema,),
    ).fetchall()
    return [row[0] for row in rows]


def test_a_post_from_another_process_wakes_a_waiting_daemon(store_on_schema):
    daemon, sender = store_on_schema(), store_on_schema()
    assert daemon.wait_for_requests(timeout=5) is True  # starts listening: claim first
    assert daemon.claim_requests("d") == []
    assert daemon.wait_for_requests(timeout=0.05) is False  # nothing posted: times out
    woke: list[tuple[bool, float]] = []

    def wait() -> None:
        started = time.monotonic()
        woke.append((daemon.wait_for_requests(timeout=30), time.monotonic() - started))

    waiter = threading.Thread(target=wait)
    waiter.start()
    sender.post_request(mail(1))
    waiter.join(timeout=30)
    [(changed, waited)] = woke
    assert changed and waited < 10  # woken by NOTIFY, not by the 30 s timeout
    assert [r.request_id for r in daemon.claim_requests("d")] == ["req-1"]


def test_a_daemon_can_wait_for_posts_only_not_answers(store_on_schema):
    daemon, other = store_on_schema(), store_on_schema()
    assert daemon.wait_for_requests(timeout=5, answers=False) is True  # starts listening
    other.post_request(mail(1))
    assert daemon.wait_for_requests(timeout=10, answers=False) is True  # a post wakes it
    [request] = other.claim_requests("other daemon")
    other.answer_request(request.request_id, None)
    started = time.monotonic()
    assert daemon.wait_for_requests(timeout=0.5, answers=False) is False  # an answer does not
    assert time.monotonic() - started >= 0.45  # it waited out its timeout
    other.post_request(mail(2))
    assert daemon.wait_for_requests(timeout=10, answers=False) is True
    other.answer_request("req-2", "no")
    assert daemon.wait_for_requests(timeout=10) is True  # by default, answers wake it too


def test_the_mailbox_version_sees_posts_and_answers_of_other_processes(store_on_schema):
    daemon, sender = store_on_schema(), store_on_schema()
    before = daemon.mailbox_version()  # starts listening
    sender.post_request(mail(1))
    wait_until(lambda: daemon.mailbox_version() != before, "the post's NOTIFY")
    posted = daemon.mailbox_version()
    [claimed] = daemon.claim_requests("d")
    assert daemon.mailbox_version() == posted  # a claim is not news
    sender.answer_request(claimed.request_id)
    wait_until(lambda: daemon.mailbox_version() != posted, "the answer's NOTIFY")


def test_a_lost_listener_reconnects_and_reports_a_change(store_on_schema, schema, admin):
    daemon, sender = store_on_schema(), store_on_schema()
    assert daemon.wait_for_requests(timeout=5)
    [pid] = listener_pids(admin, schema)
    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert daemon.wait_for_requests(timeout=30)  # the loss is reported as a change
    assert daemon.wait_for_requests(timeout=30)  # so is listening again
    [new_pid] = listener_pids(admin, schema)
    assert new_pid != pid
    sender.post_request(mail(1))
    assert daemon.wait_for_requests(timeout=30)
    assert [r.request_id for r in daemon.claim_requests("d")] == ["req-1"]


def test_a_listener_that_cannot_connect_fails_once_then_backs_off(store_on_schema, monkeypatch):
    store = store_on_schema()

    def refuse() -> None:
        raise psycopg.OperationalError("connection refused (test)")

    monkeypatch.setattr(store._listener, "_connect", refuse)  # private: the server "down"
    with pytest.raises(StoreError, match=r"listening for mailbox requests .*retried after 1 s"):
        store.mailbox_version()
    before = store.mailbox_version()  # within the back-off: no new attempt, no error
    assert store.mailbox_version() == before
    assert store.wait_for_requests(timeout=0.05) is False


def test_closing_the_store_ends_a_wait_at_once(store_on_schema):
    store = store_on_schema()
    assert store.wait_for_requests(timeout=5)  # listening
    outcome: list[Any] = []
    waiter = threading.Thread(target=lambda: outcome.append(store.wait_for_requests(60)))
    waiter.start()
    wait_until(store._listener._lock.locked, "the waiter to block")  # private: no other sign
    store.close()
    waiter.join(timeout=10)
    assert not waiter.is_alive() and outcome == [False]


def test_daemons_in_separate_processes_claim_each_request_once(store_on_schema):
    sender = store_on_schema()
    for n in range(40):
        sender.post_request(mail(n))
    daemons = [store_on_schema(max_size=2) for _ in range(4)]
    barrier = threading.Barrier(len(daemons))
    got: dict[int, list[str]] = {i: [] for i in range(len(daemons))}

    def claim(i: int) -> None:
        barrier.wait(timeout=10)
        while batch := daemons[i].claim_requests(f"d{i}", limit=3):
            got[i].extend(r.request_id for r in batch)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(daemons))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    claimed = [rid for ids in got.values() for rid in ids]
    assert sorted(claimed) == sorted(f"req-{n}" for n in range(40))  # each exactly once
    for i, ids in got.items():
        assert all(sender.get_request(rid).claimed_by == f"d{i}" for rid in ids)


def test_mailbox_ids_postgres_cannot_hold(store_on_schema):
    store = store_on_schema()
    with pytest.raises(StoreError, match="NUL character"):
        store.post_request(Request("bad\x00id", "resume", "r", posted_at=0.0))
    with pytest.raises(StoreError, match="not in this store"):
        store.get_request("bad\x00id")
    store.post_request(mail(1))
    store.claim_requests("d")
    store.answer_request("req-1", "the step said \x00 somewhere")
    assert store.get_request("req-1").answer == "the step said \\0 somewhere"


def test_a_version_1_schema_is_migrated_and_keeps_its_runs(pg_dsn, schema, admin):
    ident = sql.Identifier(schema)
    with admin.transaction():
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        admin.execute(
            sql.SQL("CREATE TABLE {}.stageline_meta (key text PRIMARY KEY, value text)").format(
                ident
            )
        )
        for statement in MIGRATIONS[1]:
            admin.execute(statement.replace("{s}", ident.as_string(admin)))
        admin.execute(
            sql.SQL("INSERT INTO {}.stageline_meta VALUES ('schema_version', '1')").format(ident)
        )
    old = record("kept")
    with admin.transaction():  # a run written by a version-1 store
        admin.execute(
            sql.SQL(
                "INSERT INTO {}.runs VALUES "
                "(%s, 'p', 1, 'paused', 's1', %s, NULL, NULL, 3, 4, 1, 0, 0)"
            ).format(ident),
            (old.run_id, encode({"x": 1})),
        )
    store = PostgresStore(pg_dsn, schema=schema)
    try:
        run = store.get_run("kept")
        assert (run.status, run.state, run.stage) == ("paused", {"x": 1}, "s1")
        store.post_request(mail(1))
        assert [r.request_id for r in store.claim_requests("d")] == ["req-1"]
    finally:
        store.close()
    meta = sql.SQL("SELECT value FROM {}.stageline_meta").format(ident)
    assert admin.execute(meta).fetchone() == (str(SCHEMA_VERSION),)


def test_the_daemon_serves_a_postgres_mailbox(store_on_schema):
    from stageline import Registry
    from stageline.daemon import Daemon, DaemonOptions

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("a", lambda s, c: {"done": True})])])
    daemon_store, sender = store_on_schema(), store_on_schema()
    stop = threading.Event()
    with Registry() as registry:
        factories = {"p": PipelineFactory(pipeline).bound_to(daemon_store, registry)}
        # no polling, no idle claims for a minute: only the post's NOTIFY can wake it
        options = DaemonOptions(poll_interval=60.0, idle_claim=60.0, recover_every=None)
        daemon = Daemon(factories, daemon_store, registry, options)
        server = threading.Thread(target=daemon.serve, args=(stop,))
        server.start()
        try:
            sender.post_request(
                Request("start-1", "start", "run-1", time.time(), pipeline_id="p", args={})
            )
            while not (answer := sender.get_request("start-1")).answered:
                sender.wait_for_requests(timeout=5)  # the answer's NOTIFY wakes the sender
            assert answer.status == "done", answer
            assert answer.answered_at - answer.posted_at < 5.0
            wait_until(lambda: daemon_store.get_run("run-1").status == "succeeded", "the run")
        finally:
            stop.set()
            server.join(timeout=20)
    assert daemon_store.get_run("run-1").state == {"done": True}


# --------------------------------------------------------------------------- leases


def orphan(store: PostgresStore, run_id: str) -> None:
    """A running run whose owner's lease ran out at t=100."""
    store.create_run(replace(record(run_id), owner="dead-host", lease_until=100.0))


def test_hosts_racing_to_take_over_an_orphan_exactly_one_wins(store_on_schema):
    hosts = [store_on_schema(max_size=1) for _ in range(5)]
    orphan(hosts[0], "orphan")
    barrier = threading.Barrier(len(hosts))
    won: dict[str, bool] = {}

    def claim(i: int) -> None:
        barrier.wait(timeout=10)
        won[f"h{i}"] = hosts[i].claim_run("orphan", f"h{i}", 500.0, now=200.0)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    [winner] = [host for host, ok in won.items() if ok]
    assert len(won) == len(hosts)
    taken = hosts[1].load_run("orphan")
    assert (taken.owner, taken.lease_until, taken.version) == (winner, 500.0, 0)
    assert not hosts[2].claim_run("orphan", "late", 600.0, now=200.0)  # lease is live again


def test_a_claim_skips_a_run_whose_row_is_busy_instead_of_waiting(store_on_schema, schema, admin):
    store = store_on_schema()
    orphan(store, "busy")
    outcome: list[bool] = []
    with admin.transaction():  # e.g. its owner is committing a stage right now
        table = sql.SQL("{}.runs").format(sql.Identifier(schema))
        admin.execute(sql.SQL("SELECT 1 FROM {} WHERE run_id = 'busy' FOR UPDATE").format(table))
        claimer = threading.Thread(
            target=lambda: outcome.append(store.claim_run("busy", "b", 500.0, now=200.0))
        )
        claimer.start()
        claimer.join(timeout=10)
        assert not claimer.is_alive(), "claim_run waited on the row lock (no SKIP LOCKED)"
    assert outcome == [False]
    assert store.claim_run("busy", "b", 500.0, now=200.0)  # free again: taken


def test_renewals_skip_runs_taken_over_and_ids_postgres_cannot_hold(store_on_schema):
    store = store_on_schema()
    for run_id in ("r1", "r2", "r3"):
        store.create_run(replace(record(run_id), owner="me", lease_until=100.0))
    assert store.claim_run("r2", "other", 900.0, now=150.0)
    renewed = store.renew_leases("me", ["r3", "r2", "r1", "nul\x00", "absent"], 300.0)
    assert renewed == ["r3", "r1"]  # in the order asked, without the lost one
    assert [store.load_run(r).lease_until for r in ("r1", "r2", "r3")] == [300.0, 900.0, 300.0]
    with pytest.raises(RunNotFound):
        store.claim_run("nul\x00", "me", 1.0, now=0.0)


# --------------------------------------------------------------------------- store URLs


@pytest.mark.parametrize(
    ("dsn", "schema", "expected"),
    [
        ("postgresql://h/db", None, ("postgresql://h/db", "stageline")),
        ("postgresql://h/db?schema=shop", None, ("postgresql://h/db", "shop")),
        ("postgres://h/db?sslmode=disable&schema=s", "s", ("postgres://h/db?sslmode=disable", "s")),
        ("host=h dbname=db", "mine", ("host=h dbname=db", "mine")),
    ],
)
def test_the_schema_can_come_from_the_url(dsn, schema, expected):
    from stageline.stores.postgres import _schema_from_url

    assert _schema_from_url(dsn, schema) == expected


def test_two_different_schemas_are_refused():
    with pytest.raises(StoreError, match="two schemas"):
        PostgresStore("postgresql://h/db?schema=a", schema="b")


def test_a_store_url_names_its_schema(pg_url, admin):
    from stageline.stores.url import open_store

    schema = pg_url.rpartition("schema=")[2]
    store = open_store(pg_url)
    try:
        store.create_run(record("via-url"))
        table = sql.SQL("SELECT run_id FROM {}.runs").format(sql.Identifier(schema))
        assert admin.execute(table).fetchall() == [("via-url",)]
    finally:
        store.close()


def test_a_schema_made_by_a_dba_opens_without_create_privileges(pg_dsn, schema, admin):
    PostgresStore(pg_dsn, schema=schema, min_size=0).close()  # the DBA's migration
    role = f"stageline_app_{uuid.uuid4().hex[:8]}"
    ident, app = sql.Identifier(schema), sql.Identifier(role)
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(app))  # no CREATE on the database
    try:
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, app))
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {} TO {}").format(
                ident, app
            )
        )
        as_app = psycopg.conninfo.make_conninfo(pg_dsn, user=role)
        with pytest.raises(StoreError, match="may not create or upgrade the schema"):
            PostgresStore(as_app, schema=f"{schema}_new")  # creating one needs privileges
        store = PostgresStore(as_app, schema=schema)
        try:
            store.create_run(record("by-app"))
            assert store.get_run("by-app").status == "running"
        finally:
            store.close()
    finally:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(app))
        admin.execute(sql.SQL("DROP ROLE {}").format(app))


def test_a_run_whose_connection_drops_fails_clearly_and_the_registry_goes_on(
    store_on_schema, schema, admin
):
    """Issue 9: a Postgres connection lost mid-run: a clear StoreError for that run,
    nothing committed is lost, other runs keep being served, and recovery continues it."""
    store = store_on_schema(min_size=1, max_size=1, check_after=None)
    started, gate = threading.Event(), threading.Event()

    def hold(state, ctx):
        started.set()
        assert gate.wait(20)
        return {"n": state["n"] + 1}

    def inc(state, ctx):
        return {"n": state["n"] + 1}

    pipeline = Pipeline("dropped", [
        Stage("s1", 1, steps=[Step("inc", inc)]),
        Stage("s2", 2, steps=[Step("hold", hold)]),
        Stage("s3", 3, steps=[Step("inc", inc)]),
    ])  # fmt: skip
    with Registry() as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry,
                                  initial_state={"n": 0})  # fmt: skip
        run = factory.prepare()
        future = run.start()
        assert started.wait(20)  # s1 is committed; s2's step runs
        for pid in store_pids(admin, schema):
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        gate.set()
        with pytest.raises(StoreError, match="connection"):
            future.result(timeout=20)
        info = store.get_run(run.run_id)  # the pool replaced the dead connection
        assert (info.status, info.stage, info.state) == ("running", "s2", {"n": 1})
        started.clear()
        other = factory.prepare().run(timeout=20)  # the registry serves other runs
        assert other.status == "succeeded" and other.state == {"n": 3}
        [again] = registry.recover(factory)
        assert again.wait(timeout=20).state == {"n": 3}
