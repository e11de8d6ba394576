"""The DBOS side of the durable cases: its workflows, and a function per case giving a sample.

DBOS is used the idiomatic way: `DBOS(config=...)` then `DBOS.launch()` (untimed), one
`@DBOS.workflow()` calling a `@DBOS.step()` per stage (a stage of ours, a node of
LangGraph's), each step's output checkpointed in DBOS's system database before the next
step starts; `DBOS.recv(topic)` in a workflow and `DBOS.send(workflow_id, message, topic)`
from another thread for messages; `DBOS.destroy()` after every sample, so each sample
starts on a new system database. A workflow is called directly (it runs in the caller's
thread); concurrent runs are calls on a `ThreadPoolExecutor`, as for LangGraph.

Durability, SQLite. DBOS opens its SQLite system database with SQLAlchemy's pysqlite
driver (`BEGIN IMMEDIATE`, busy_timeout 30 s, foreign keys on) and sets no journal_mode
and no synchronous pragma: left alone it runs in SQLite's rollback-journal (DELETE) mode
with SQLite's default synchronous=FULL. Our SqliteStore uses WAL and synchronous=FULL, so
the bench puts the new file in WAL mode before `DBOS.launch()` (`PRAGMA journal_mode=WAL`
is stored in the file and holds for every later connection) and checks, on DBOS's own
engine, that its connections report journal_mode=wal and synchronous=2 (FULL); a sample
that sees anything else stops the bench. The WAL autocheckpoint stays SQLite's default
(1,000 pages; ours 256).

Durability, PostgreSQL: the server's default synchronous_commit=on (checked), DBOS's
system tables in a scratch schema (`dbos_system_schema`), dropped after the sample.

Messages on SQLite: SQLite has no LISTEN/NOTIFY, so a waiting `DBOS.recv` is woken by
DBOS's notification poller, which wakes every `notification_listener_polling_interval_sec`
(default 1.0 s). The bench sets it to its documented minimum, 0.001 s: the leanest setup
(with no run waiting, the poller only sleeps).

`INSTALLED` is false when DBOS is not installed: the DBOS column is then empty (`-`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from .pg import PG_DSN, scratch_schema, synchronous_commit
from .settings import DURABLE_STAGES, THROUGHPUT_STAGES, WARM_RUNS, Settings
from .timing import Measure, check, per, scratch_dir

try:
    from dbos import DBOS
except ImportError:  # pragma: no cover - the DBOS column is then empty
    DBOS = None

INSTALLED = DBOS is not None
SQLITE_POLL_SEC = 0.001  # notification_listener_polling_interval_sec: its minimum
TOPIC = "approve"
WAITING_SETTLE_SEC = 0.02  # after a waiter's first step, for it to be blocked in recv

MARKS: list[float] = []  # perf_counter when a waiter's next step started
READY = threading.Event()  # a waiter ran its first step and goes on to recv

if INSTALLED:

    @DBOS.step()
    def db_inc(n: int) -> int:
        return n + 1

    @DBOS.step()
    def db_mark(n: int) -> int:
        MARKS.append(time.perf_counter())
        return n + 1

    @DBOS.workflow()
    def db_linear(stages: int) -> int:
        n = 0
        for _ in range(stages):
            n = db_inc(n)
        return n

    @DBOS.workflow()
    def db_waiter() -> dict[str, Any]:
        n = db_inc(0)
        READY.set()
        approved = DBOS.recv(TOPIC, timeout_seconds=60)
        return {"n": db_mark(n), "approved": approved}


def measure(fn: Measure) -> Measure | None:
    """`fn`, or None when DBOS is not installed (its column is then `-`)."""
    return fn if INSTALLED else None


@contextmanager
def launched(url: str, **config: Any) -> Iterator[None]:
    DBOS(config={"name": "stageline-bench", "system_database_url": url, **config})
    DBOS.launch()
    try:
        yield
    finally:
        DBOS.destroy()


def system_engine() -> Any:
    from dbos._dbos import _get_dbos_instance  # only to check the durability DBOS runs with

    return _get_dbos_instance()._sys_db.engine


@contextmanager
def sqlite_session(s: Settings) -> Iterator[None]:
    """DBOS launched on a new SQLite system database in WAL mode, synchronous=FULL."""
    import sqlalchemy as sa

    with scratch_dir(s) as tmp:
        path = tmp / "dbos.sqlite"
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA journal_mode=WAL")
        db.close()
        with launched(
            f"sqlite:///{path}",
            log_level="WARNING",
            notification_listener_polling_interval_sec=SQLITE_POLL_SEC,
        ):
            with system_engine().connect() as conn:
                mode = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
                sync = conn.execute(sa.text("PRAGMA synchronous")).scalar()
            check((mode, sync) == ("wal", 2), f"DBOS's SQLite runs with {mode}, sync {sync}")
            yield


@contextmanager
def pg_session() -> Iterator[None]:
    """DBOS launched on PostgreSQL, its system tables in a scratch schema."""
    with scratch_schema("dbos_bench") as schema:
        on = synchronous_commit(PG_DSN)
        check(on == "on", f"PostgreSQL runs with synchronous_commit={on}")
        with launched(PG_DSN, log_level="WARNING", dbos_system_schema=schema):
            yield


def linear_runs(runs: int, stages: int) -> float:
    """Time per step of `runs` workflows of `stages` steps, one after the other."""
    start = time.perf_counter()
    for _ in range(runs):
        n = db_linear(stages)
        check(n == stages, f"DBOS workflow ended with {n}")
    return per(start, runs * stages)


def concurrent_runs(runs: int, in_flight: int) -> float:
    """Time per run of `runs` 10-step workflows on `in_flight` threads."""
    for _ in range(WARM_RUNS):  # untimed, as stageline's
        db_linear(THROUGHPUT_STAGES)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        outputs = list(pool.map(lambda _: db_linear(THROUGHPUT_STAGES), range(runs)))
    elapsed = per(start, runs)
    check(all(n == THROUGHPUT_STAGES for n in outputs), "a DBOS workflow went wrong")
    return elapsed


def db_durable(s: Settings) -> float:
    with sqlite_session(s):
        return linear_runs(s.durable_runs, DURABLE_STAGES)


def db_durable_pg(s: Settings) -> float:
    with pg_session():
        return linear_runs(s.durable_runs, DURABLE_STAGES)


def db_throughput_sqlite(s: Settings) -> float:
    with sqlite_session(s):
        return concurrent_runs(s.durable_throughput_runs, s.concurrency)


def db_throughput_pg(s: Settings) -> float:
    with pg_session():
        return concurrent_runs(s.durable_throughput_runs, s.concurrency)


def db_runs_point(s: Settings, runs: int, in_flight: int) -> float:
    """The durable sweep's point: time per run on SQLite."""
    with sqlite_session(s):
        return concurrent_runs(runs, in_flight)


def wait_latencies(runs: int) -> list[float]:
    """For each of `runs` waiters, one at a time: from DBOS.send to its next step."""
    latencies = []
    for _ in range(runs):
        READY.clear()
        handle = DBOS.start_workflow(db_waiter)
        check(READY.wait(10), "a DBOS waiter never ran its first step")
        time.sleep(WAITING_SETTLE_SEC)  # untimed: let it block in DBOS.recv
        start = time.perf_counter()
        DBOS.send(handle.get_workflow_id(), True, TOPIC)
        result = handle.get_result()
        check(result == {"n": 2, "approved": True}, f"DBOS waiter ended with {result}")
        latencies.append((MARKS[-1] - start) * 1e6)
    return latencies


def db_wait_message(s: Settings) -> float:
    import statistics

    with sqlite_session(s):
        return statistics.median(wait_latencies(s.wait_runs))
