"""The durable cases' stageline and LangGraph sides: throughput on SQLite and PostgreSQL, a
durable step on PostgreSQL, and the latency of a message to a waiting run.

Durability is the same on every side. SQLite: WAL and synchronous=FULL (SqliteStore sets
both; SqliteSaver sets WAL and keeps SQLite's default synchronous=FULL; DBOS: see
dbos_peer), LangGraph with `durability="sync"` (a node's checkpoint is written before the
next node starts: stageline's guarantee). PostgreSQL: synchronous_commit=on (the default),
each library in a scratch schema; `PostgresStore` with its default pool (10 connections),
LangGraph's `PostgresSaver` on a `psycopg_pool.ConnectionPool` of up to 50 (its documented
setup for concurrent use: autocommit, prepare_threshold=0, dict_row).

`wait_for_message`: a run waits for a message and the bench's thread sends it, one run at
a time, after the run has reached its wait (untimed). Timed: from the send to the start of
the run's next stage (the step records `time.perf_counter()`). Stageline: a run paused by
its first stage's router (`Pause("s3")`) on a SqliteStore with a Registry, resumed with
`factory.resume(run_id, patch={"approved": True}).start()`; LangGraph: `interrupt()` in a
node, resumed with `invoke(Command(resume=True), config, durability="sync")` on a
SqliteSaver (LangGraph resumes on the sending thread: it has no run waiting elsewhere).
A sample is the median latency of its messages.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from stageline import PipelineFactory, Registry
from stageline.stores import SqliteStore

from .ours import Harness, pg_store, sl_concurrent, sl_pause_pipeline, sl_pause_runs, sl_pooled
from .peers import (
    END,
    START,
    GateState,
    StateGraph,
    lg_gate,
    lg_gate_inc,
    lg_linear_graph,
    lg_pause_threads,
    lg_run_ok,
    new_thread_id,
    thread,
)
from .pg import dsn_in, scratch_schema
from .settings import DURABLE_STAGES, RESUMED_STATE, THROUGHPUT_STAGES, WARM_RUNS, Settings
from .timing import check, per, scratch_dir

MARKS: list[float] = []  # perf_counter when a resumed run's next stage started


def sl_throughput_sqlite(s: Settings) -> float:
    return sl_runs_sqlite(s, s.durable_throughput_runs, s.concurrency)


def sl_pooled_sqlite(s: Settings) -> float:
    return sl_runs_sqlite(s, s.durable_throughput_runs, s.concurrency, harness=sl_pooled)


def sl_runs_sqlite(
    s: Settings, runs: int, in_flight: int, harness: Harness = sl_concurrent
) -> float:
    """`harness` (how the runs are started: `sl_concurrent` or `sl_pooled`) on a new
    SqliteStore (synchronous=FULL, WAL)."""
    with scratch_dir(s) as tmp:
        store = SqliteStore(tmp / "stageline.db")
        try:
            return harness(store, runs, in_flight)
        finally:
            store.close()


def sl_throughput_pg(s: Settings) -> float:
    return sl_runs_pg(s, sl_concurrent)


def sl_pooled_pg(s: Settings) -> float:
    return sl_runs_pg(s, sl_pooled)


def sl_runs_pg(s: Settings, harness: Harness) -> float:
    with pg_store() as store:
        return harness(store, s.durable_throughput_runs, s.concurrency)


@contextmanager
def lg_sqlite_saver(s: Settings) -> Iterator[Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    with scratch_dir(s) as tmp:
        conn = sqlite3.connect(tmp / "langgraph.db", check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()  # WAL; synchronous stays SQLite's default, FULL
            yield saver
        finally:
            conn.close()


@contextmanager
def lg_pg_saver(pooled: bool) -> Iterator[Any]:
    """A PostgresSaver, its tables in a scratch schema: on a pool of up to 50 connections
    (`pooled`), or on one connection (`PostgresSaver.from_conn_string`)."""
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    with scratch_schema("langgraph_bench") as schema:
        if not pooled:
            with PostgresSaver.from_conn_string(dsn_in(schema)) as saver:
                saver.setup()
                yield saver
            return
        with ConnectionPool(dsn_in(schema), max_size=50, kwargs=kwargs) as pool:
            saver = PostgresSaver(pool)
            saver.setup()
            yield saver


def lg_concurrent(saver: Any, runs: int, in_flight: int) -> float:
    """Time per run of `runs` 10-node invocations on `in_flight` threads, durability=sync."""
    app = lg_linear_graph(THROUGHPUT_STAGES, saver)

    def invoke(_: int) -> dict[str, Any]:
        config = thread(new_thread_id("durable-throughput"))
        output: dict[str, Any] = app.invoke({"n": 0}, config, durability="sync")
        return output

    for i in range(WARM_RUNS):  # untimed, as stageline's
        invoke(i)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        outputs = list(pool.map(invoke, range(runs)))
    elapsed = per(start, runs)
    for output in outputs:
        lg_run_ok(output, THROUGHPUT_STAGES)
    return elapsed


def lg_throughput_sqlite(s: Settings) -> float:
    return lg_runs_sqlite(s, s.durable_throughput_runs, s.concurrency)


def lg_runs_sqlite(s: Settings, runs: int, in_flight: int) -> float:
    with lg_sqlite_saver(s) as saver:
        return lg_concurrent(saver, runs, in_flight)


def lg_throughput_pg(s: Settings) -> float:
    with lg_pg_saver(pooled=True) as saver:
        return lg_concurrent(saver, s.durable_throughput_runs, s.concurrency)


def lg_durable_pg(s: Settings) -> float:
    with lg_pg_saver(pooled=False) as saver:
        app = lg_linear_graph(DURABLE_STAGES, saver)
        start = time.perf_counter()
        for _ in range(s.durable_runs):
            output = app.invoke({"n": 0}, thread(new_thread_id("pg")), durability="sync")
            lg_run_ok(output, DURABLE_STAGES)
        return per(start, s.durable_runs * DURABLE_STAGES)


def sl_mark(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    MARKS.append(time.perf_counter())
    return {"n": state["n"] + 1}


def sl_wait_message(s: Settings) -> float:
    with scratch_dir(s) as tmp, Registry() as registry:
        store = SqliteStore(tmp / "stageline.db")
        try:
            factory = PipelineFactory(
                sl_pause_pipeline("wait3", last=sl_mark),
                store=store,
                initial_state={"n": 0},
                registry=registry,
            )
            latencies = []
            for run_id in sl_pause_runs(factory, s.wait_runs):
                start = time.perf_counter()
                future = factory.resume(run_id, patch={"approved": True}).start()
                result = future.result()
                check(result.state == RESUMED_STATE, f"stageline waiter ended {result.state}")
                latencies.append((MARKS[-1] - start) * 1e6)
            return statistics.median(latencies)
        finally:
            store.close()


def lg_mark(state: GateState) -> dict[str, Any]:
    MARKS.append(time.perf_counter())
    return {"n": state["n"] + 1}


def lg_wait_graph(saver: Any) -> Any:
    graph = StateGraph(GateState)
    graph.add_node("s1", lg_gate_inc)
    graph.add_node("gate", lg_gate)
    graph.add_node("s3", lg_mark)
    graph.add_edge(START, "s1")
    graph.add_edge("s1", "gate")
    graph.add_edge("gate", "s3")
    graph.add_edge("s3", END)
    return graph.compile(checkpointer=saver)


def lg_wait_message(s: Settings) -> float:
    from langgraph.types import Command

    with lg_sqlite_saver(s) as saver:
        app = lg_wait_graph(saver)
        latencies = []
        for config in lg_pause_threads(app, s.wait_runs):
            start = time.perf_counter()
            output = app.invoke(Command(resume=True), config, durability="sync")
            check(output == RESUMED_STATE, f"LangGraph waiter ended with {output}")
            latencies.append((MARKS[-1] - start) * 1e6)
        return statistics.median(latencies)
