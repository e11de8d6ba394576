"""Side-by-side benchmark: stageline against LangGraph, on the same work, in one process.

    python scripts/bench.py [--quick] [--cases NAME[,NAME...]] [--reps N] [--json FILE]
                            [--plot FILE.png [--plot-only]]

Every case has one small function per library that builds what it needs (untimed), times
the work with `time.perf_counter` and returns one sample. Each side is warmed up once,
then the two sides are sampled alternately and the table shows the median sample. The
ratio is stageline / LangGraph: lower is better for stageline. Two cases run child
processes: `cold_resume_fresh_process` times whole fresh interpreters (one per sample),
and `live_paused_runs_memory` measures one child (`--probe-paused-memory N`, once).

Units: microseconds, except `checkpoint_bytes_per_stage` whose numbers are bytes written
per stage, and `live_paused_runs_memory` whose numbers are bytes of RSS per paused run and
a count of threads (the JSON keys keep their `_us` names for every case). Rows marked in
parentheses are information rows: a variant of the case above on the LangGraph side (or
both sides for the WAL row), compared with the same kind of stageline figure.
`live_paused_runs_memory` is stageline only: its LangGraph figure and ratio are None (`-`
in the table, null in the JSON). `durable_postgres_stage_commit` is stageline only too: the
same work as `durable_sqlite_stage_commit` on PostgreSQL, with the SQLite figure beside it;
it runs against $STAGELINE_BENCH_PG_DSN (default postgresql://postgres@127.0.0.1:5432/test)
and is skipped, with a note, when that server does not answer. Some cases have a target, printed met or MISSED under the
table; a missed target does not change the exit code.

LangGraph is used the idiomatic way: `StateGraph`, `add_node`, `add_edge`, `START`/`END`,
`compile(checkpointer=...)` and `invoke(input, {"configurable": {"thread_id": ...}})`. Its
default durability ("async": a step's checkpoint is written while the next step runs) is
used everywhere except on SQLite (`durable_sqlite_stage_commit` and the two SQLite resume
cases), which ask for `durability="sync"`: that is stageline's guarantee (a stage is
committed before the next one starts). An information row of the durable case shows the
default too.

`--plot FILE.png` also runs two scaling sweeps (see "sweeps" below), prints their numbers
as a second table and draws them, per-stage cost on log-log axes, into FILE.png. It needs
matplotlib, which no extra installs (pip install matplotlib); `--plot-only` skips the cases.
The full sweeps take about 4 minutes, and LangGraph's 10,000-node run holds about 7 GB of
checkpoints in its InMemorySaver; `--quick` stops both sweeps at 1,000.

Needs the `bench` extra: pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.stores import SqliteStore
from stageline.stores.sqlite import WAL_AUTOCHECKPOINT_PAGES

try:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt
except ImportError:  # pragma: no cover - reported by main()
    StateGraph = None  # type: ignore[assignment,misc]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """How much work one sample does, and how many samples make a median."""

    reps: int
    linear_runs: int  # runs of the 100-stage pipeline per sample
    fanout_runs: int  # runs of the 4-step fan-out per sample
    durable_runs: int  # runs of the 20-stage SQLite pipeline per sample
    throughput_runs: int  # runs of the 10-stage pipeline per sample
    resume_runs: int  # paused runs resumed per sample, in memory
    slow_resume_runs: int  # paused runs resumed per sample from SQLite
    cold_reps: int  # fresh processes per side (each is one sample)
    paused_live_runs: int  # paused runs held live for the memory probe
    concurrency: int = 50
    tmpdir: str | None = None


FULL = Settings(
    reps=5,
    linear_runs=5,
    fanout_runs=200,
    durable_runs=5,
    throughput_runs=1000,
    resume_runs=200,
    slow_resume_runs=30,
    cold_reps=7,
    paused_live_runs=10_000,
)
QUICK = Settings(
    reps=3,
    linear_runs=3,
    fanout_runs=100,
    durable_runs=3,
    throughput_runs=200,
    resume_runs=100,
    slow_resume_runs=15,
    cold_reps=3,
    paused_live_runs=2_000,
)

LINEAR_STAGES = 100
DURABLE_STAGES = 20
THROUGHPUT_STAGES = 10
FANOUT_KEYS = ("a", "b", "c", "d")
RECURSION_LIMIT = 10_000  # LangGraph's default (25) is fewer steps than the 100-stage graph


class BenchError(RuntimeError):
    """A run did not do what the benchmark expected: its numbers would mean nothing."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise BenchError(what)


def per(start: float, units: int) -> float:
    """Microseconds per unit since `start`."""
    return (time.perf_counter() - start) * 1e6 / units


@contextmanager
def scratch_dir(settings: Settings) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stageline-bench-", dir=settings.tmpdir) as path:
        yield Path(path)


# --------------------------------------------------------------------------- the work
#
# The same trivial action on both sides: read `n`, return a patch / partial update.


class Counter(TypedDict):
    n: int


class FanState(TypedDict, total=False):
    n: int
    a: int  # one key per branch: concurrent updates never touch the same channel
    b: int
    c: int
    d: int


def sl_inc(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"n": state["n"] + 1}


def lg_inc(state: Counter) -> dict[str, Any]:
    return {"n": state["n"] + 1}


def sl_fan(key: str) -> Callable[..., dict[str, Any]]:
    def step(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {key: state["n"] + 1}

    return step


def lg_fan(key: str) -> Callable[..., dict[str, Any]]:
    def node(state: FanState) -> dict[str, Any]:
        return {key: state["n"] + 1}

    return node


def lg_join(state: FanState) -> None:
    """The barrier LangGraph needs to wait for every branch; it changes nothing."""
    return None


def sl_linear_pipeline(stages: int) -> Pipeline:
    return Pipeline(
        f"linear{stages}",
        [Stage(f"s{i}", order=i, steps=[Step("inc", sl_inc)]) for i in range(stages)],
    )


def sl_fanout_pipeline() -> Pipeline:
    steps = [Step(key, sl_fan(key)) for key in FANOUT_KEYS]
    return Pipeline("fanout", [Stage("fan", order=1, steps=steps)])


def sl_children_pipeline() -> Pipeline:
    children = [
        Pipeline(f"child_{key}", [Stage("work", order=1, steps=[Step(key, sl_fan(key))])])
        for key in FANOUT_KEYS
    ]
    return Pipeline("children", [Stage("fan", order=1, pipelines=children)])


def lg_subgraph(key: str) -> Any:
    """A one-node graph, compiled: LangGraph's unit of a nested graph."""
    graph = StateGraph(FanState)
    graph.add_node(key, lg_fan(key))
    graph.add_edge(START, key)
    graph.add_edge(key, END)
    return graph.compile()


def lg_call_subgraph(key: str, subgraph: Any) -> Callable[..., dict[str, Any]]:
    """A node that runs a subgraph and hands back only its branch's key (LangGraph's
    documented way when parallel subgraphs share keys such as "n")."""

    def node(state: FanState) -> dict[str, Any]:
        return {key: subgraph.invoke(state)[key]}

    return node


def lg_subgraph_fanout_graph(checkpointer: Any) -> Any:
    graph = StateGraph(FanState)
    branches = [f"sub_{key}" for key in FANOUT_KEYS]
    for key, name in zip(FANOUT_KEYS, branches, strict=True):
        graph.add_node(name, lg_call_subgraph(key, lg_subgraph(key)))
        graph.add_edge(START, name)
    graph.add_node("join", lg_join)
    graph.add_edge(branches, "join")
    graph.add_edge("join", END)
    return graph.compile(checkpointer=checkpointer)


def lg_linear_graph(stages: int, checkpointer: Any) -> Any:
    graph = StateGraph(Counter)
    previous = START
    for i in range(stages):
        graph.add_node(f"s{i}", lg_inc)
        graph.add_edge(previous, f"s{i}")
        previous = f"s{i}"
    graph.add_edge(previous, END)
    return graph.compile(checkpointer=checkpointer)


def lg_fanout_graph(checkpointer: Any) -> Any:
    graph = StateGraph(FanState)
    branches = [f"step_{key}" for key in FANOUT_KEYS]
    for key, name in zip(FANOUT_KEYS, branches, strict=True):
        graph.add_node(name, lg_fan(key))
        graph.add_edge(START, name)
    graph.add_node("join", lg_join)
    graph.add_edge(branches, "join")
    graph.add_edge("join", END)
    return graph.compile(checkpointer=checkpointer)


def thread(thread_id: str, recursion_limit: int = RECURSION_LIMIT) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": recursion_limit}


_ids = itertools.count(1)  # next() on a count is atomic: safe from many threads


def new_thread_id(prefix: str) -> str:
    """A thread_id never used before in this process (InMemorySaver keeps old threads)."""
    return f"{prefix}-{next(_ids)}"


def sl_run_ok(result: Any, expected_n: int) -> None:
    check(
        result.status == "succeeded" and result.state.get("n") == expected_n,
        f"stageline run ended {result.status} with {result.state}: {result.error}",
    )


def lg_run_ok(output: dict[str, Any], expected_n: int) -> None:
    check(output.get("n") == expected_n, f"LangGraph run ended with {output}")


# --------------------------------------------------------------------------- cases
#
# Each function returns one sample: microseconds per unit (or bytes per stage).


def sl_linear(s: Settings) -> float:
    factory = PipelineFactory(sl_linear_pipeline(LINEAR_STAGES), initial_state={"n": 0})
    start = time.perf_counter()
    for _ in range(s.linear_runs):
        sl_run_ok(factory.prepare().run(), LINEAR_STAGES)
    return per(start, s.linear_runs * LINEAR_STAGES)


def _lg_linear(s: Settings, checkpointer: Any) -> float:
    app = lg_linear_graph(LINEAR_STAGES, checkpointer)
    start = time.perf_counter()
    for _ in range(s.linear_runs):
        lg_run_ok(app.invoke({"n": 0}, thread(new_thread_id("linear"))), LINEAR_STAGES)
    return per(start, s.linear_runs * LINEAR_STAGES)


def lg_linear(s: Settings) -> float:
    return _lg_linear(s, InMemorySaver())


def lg_linear_no_checkpointer(s: Settings) -> float:
    return _lg_linear(s, None)


def _sl_fan_runs(pipeline: Pipeline, runs: int, what: str) -> float:
    """Time per run of a pipeline whose runs must set every FANOUT_KEYS key to 1."""
    factory = PipelineFactory(pipeline, initial_state={"n": 0})
    start = time.perf_counter()
    for _ in range(runs):
        result = factory.prepare().run()
        check(
            result.status == "succeeded" and all(result.state[k] == 1 for k in FANOUT_KEYS),
            f"stageline {what} ended {result.status} with {result.state}: {result.error}",
        )
    return per(start, runs)


def _lg_fan_runs(app: Any, runs: int, what: str) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        output = app.invoke({"n": 0}, thread(new_thread_id(what)))
        check(all(output.get(k) == 1 for k in FANOUT_KEYS), f"LangGraph {what} gave {output}")
    return per(start, runs)


def sl_fanout(s: Settings) -> float:
    return _sl_fan_runs(sl_fanout_pipeline(), s.fanout_runs, "fan-out")


def lg_fanout(s: Settings) -> float:
    return _lg_fan_runs(lg_fanout_graph(InMemorySaver()), s.fanout_runs, "fan-out")


def sl_children(s: Settings) -> float:
    return _sl_fan_runs(sl_children_pipeline(), s.fanout_runs, "child pipelines")


def lg_children(s: Settings) -> float:
    return _lg_fan_runs(lg_subgraph_fanout_graph(InMemorySaver()), s.fanout_runs, "subgraphs")


def sl_durable(s: Settings) -> float:
    with scratch_dir(s) as tmp:
        store = SqliteStore(tmp / "stageline.db")  # synchronous=FULL, WAL
        try:
            return _sl_durable_runs(store, s)
        finally:
            store.close()


def _sl_durable_runs(store: Any, s: Settings) -> float:
    """Time per stage of `durable_runs` runs of the 20-stage pipeline on `store`."""
    factory = PipelineFactory(
        sl_linear_pipeline(DURABLE_STAGES), store=store, initial_state={"n": 0}
    )
    start = time.perf_counter()
    for _ in range(s.durable_runs):
        sl_run_ok(factory.prepare().run(), DURABLE_STAGES)
    return per(start, s.durable_runs * DURABLE_STAGES)


PG_DSN = os.environ.get("STAGELINE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def pg_unavailable() -> str | None:
    """Why the PostgreSQL case cannot run, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_DSN} does not answer ({str(exc).strip().splitlines()[0]})"
    return None


def sl_durable_pg(s: Settings) -> float:
    """sl_durable on PostgreSQL, in a schema of its own, dropped afterwards."""
    import uuid

    import psycopg

    from stageline.stores import PostgresStore

    schema = f"stageline_bench_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(PG_DSN, schema=schema)
    try:
        return _sl_durable_runs(store, s)
    finally:
        store.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(schema))
            )


def _lg_durable(s: Settings, durability: str | None) -> float:
    with scratch_dir(s) as tmp:
        conn = sqlite3.connect(tmp / "langgraph.db", check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()  # stageline's store creates its schema in its constructor: untimed
            app = lg_linear_graph(DURABLE_STAGES, saver)
            options = {} if durability is None else {"durability": durability}
            start = time.perf_counter()
            for _ in range(s.durable_runs):
                output = app.invoke({"n": 0}, thread(new_thread_id("durable")), **options)
                lg_run_ok(output, DURABLE_STAGES)
            return per(start, s.durable_runs * DURABLE_STAGES)
        finally:
            conn.close()


def lg_durable(s: Settings) -> float:
    return _lg_durable(s, "sync")


def lg_durable_default(s: Settings) -> float:
    return _lg_durable(s, None)


FLOOR_STATE = b"\xa1an\x05" * 4  # about the size of the bench's encoded state and records


def sqlite_commit_floor(s: Settings) -> float:
    """The disk's price of stageline's durable commits, with no runtime around them.

    Bare SQLite transactions on a new file, set up as SqliteStore sets its own (WAL,
    synchronous=FULL, its autocheckpoint), each writing what a stage commit writes (one
    run row updated, two journal rows inserted), as many as a durable sample makes
    (20 stage commits plus 2 per run: its record and its start); time per stage.
    """
    commits = s.durable_runs * (DURABLE_STAGES + 2)
    with scratch_dir(s) as tmp:
        db = sqlite3.connect(tmp / "floor.db", isolation_level=None)
        try:
            for pragma in ("journal_mode=WAL", "synchronous=FULL"):
                db.execute(f"PRAGMA {pragma}")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, state BLOB, version INT)")
            db.execute(
                "CREATE TABLE events (run_id TEXT, seq INT, data BLOB, "
                "PRIMARY KEY (run_id, seq)) WITHOUT ROWID"
            )
            db.execute("INSERT INTO runs VALUES ('r', x'00', 0)")
            start = time.perf_counter()
            for i in range(commits):
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "UPDATE runs SET state = ?, version = version + 1 WHERE run_id = 'r'",
                    (FLOOR_STATE,),
                )
                db.executemany(
                    "INSERT INTO events VALUES ('r', ?, ?)",
                    ((2 * i, FLOOR_STATE), (2 * i + 1, FLOOR_STATE)),
                )
                db.execute("COMMIT")
            return per(start, s.durable_runs * DURABLE_STAGES)
        finally:
            db.close()


def _wal_size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _sl_bytes(s: Settings) -> tuple[float, float]:
    """(row bytes, WAL bytes) per stage of one 20-stage run on a SqliteStore."""
    with scratch_dir(s) as tmp:
        db = tmp / "stageline.db"
        store = SqliteStore(db)
        reader = sqlite3.connect(db, check_same_thread=False)
        try:
            factory = PipelineFactory(
                sl_linear_pipeline(DURABLE_STAGES), store=store, initial_state={"n": 0}
            )
            wal_before = _wal_size(db)
            run = factory.prepare()
            query = "SELECT length(state) FROM runs WHERE run_id = ?"
            state_bytes = [reader.execute(query, (run.run_id,)).fetchone()[0]]  # create_run

            def committed(event: Any) -> None:  # called after each commit, on the run's thread
                state_bytes.append(reader.execute(query, (run.run_id,)).fetchone()[0])

            run.on("pipeline:start", committed)
            run.on("stage:success", committed)
            sl_run_ok(run.run(), DURABLE_STAGES)
            wal_bytes = _wal_size(db) - wal_before
            (event_bytes,) = reader.execute(
                "SELECT sum(length(data)) FROM events WHERE run_id = ?", (run.run_id,)
            ).fetchone()
            return (sum(state_bytes) + event_bytes) / DURABLE_STAGES, wal_bytes / DURABLE_STAGES
        finally:
            reader.close()
            store.close()


def _lg_bytes(s: Settings) -> tuple[float, float]:
    """(blob bytes, WAL bytes) per node of one 20-node run on a SqliteSaver."""
    with scratch_dir(s) as tmp:
        db = tmp / "langgraph.db"
        conn = sqlite3.connect(db, check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            app = lg_linear_graph(DURABLE_STAGES, saver)
            thread_id = new_thread_id("bytes")
            wal_before = _wal_size(db)
            lg_run_ok(app.invoke({"n": 0}, thread(thread_id), durability="sync"), DURABLE_STAGES)
            wal_bytes = _wal_size(db) - wal_before
            (checkpoint_bytes,) = conn.execute(
                "SELECT sum(length(checkpoint) + length(metadata)) FROM checkpoints "
                "WHERE thread_id = ?",
                (thread_id,),
            ).fetchone()
            (write_bytes,) = conn.execute(
                "SELECT sum(length(value)) FROM writes WHERE thread_id = ?", (thread_id,)
            ).fetchone()
            total = checkpoint_bytes + (write_bytes or 0)
            return total / DURABLE_STAGES, wal_bytes / DURABLE_STAGES
        finally:
            conn.close()


def sl_bytes(s: Settings) -> float:
    return _sl_bytes(s)[0]


def lg_bytes(s: Settings) -> float:
    return _lg_bytes(s)[0]


def sl_wal_bytes(s: Settings) -> float:
    return _sl_bytes(s)[1]


def lg_wal_bytes(s: Settings) -> float:
    return _lg_bytes(s)[1]


def sl_throughput(s: Settings) -> float:
    factory = PipelineFactory(sl_linear_pipeline(THROUGHPUT_STAGES), initial_state={"n": 0})
    slots = threading.BoundedSemaphore(s.concurrency)  # at most `concurrency` runs in flight

    def release(_: Any) -> None:
        slots.release()

    start = time.perf_counter()
    futures = []
    for _ in range(s.throughput_runs):
        slots.acquire()
        future = factory.prepare().start()
        future.add_done_callback(release)
        futures.append(future)
    for future in futures:
        sl_run_ok(future.result(), THROUGHPUT_STAGES)
    return per(start, s.throughput_runs)


def lg_throughput(s: Settings) -> float:
    app = lg_linear_graph(THROUGHPUT_STAGES, InMemorySaver())

    def invoke(i: int) -> dict[str, Any]:
        output: dict[str, Any] = app.invoke({"n": 0}, thread(new_thread_id("throughput")))
        return output

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=s.concurrency) as pool:
        outputs = list(pool.map(invoke, range(s.throughput_runs)))
    elapsed = per(start, s.throughput_runs)
    for output in outputs:
        lg_run_ok(output, THROUGHPUT_STAGES)
    return elapsed


# --------------------------------------------------------------------------- pause/resume
#
# A 3-stage pipeline whose first stage pauses and resumes at the third (the second is
# skipped); the resume patch `{"approved": True}` is committed with the claim. LangGraph's
# equivalent: s1 -> gate -> s3, where `gate` calls `interrupt()` and returns the value it is
# resumed with, and `Command(resume=True)` resumes it; that gate node runs again on resume,
# which is how LangGraph resumes. Both end with {"n": 2, "approved": True}.

RESUMED_STATE = {"n": 2, "approved": True}


class GateState(TypedDict, total=False):
    n: int
    approved: bool


def sl_pause_router(state: dict[str, Any], results: Any) -> Pause:
    return Pause("s3", timeout=300)


def sl_pause_pipeline() -> Pipeline:
    return Pipeline(
        "pause3",
        [
            Stage("s1", order=1, steps=[Step("inc", sl_inc)], router=sl_pause_router),
            Stage("s2", order=2, steps=[Step("inc", sl_inc)]),
            Stage("s3", order=3, steps=[Step("inc", sl_inc)]),
        ],
    )


def lg_gate_inc(state: GateState) -> dict[str, Any]:
    return {"n": state["n"] + 1}


def lg_gate(state: GateState) -> dict[str, Any]:
    return {"approved": interrupt("approve?")}


def lg_gate_builder() -> Any:
    graph = StateGraph(GateState)
    graph.add_node("s1", lg_gate_inc)
    graph.add_node("gate", lg_gate)
    graph.add_node("s3", lg_gate_inc)
    graph.add_edge(START, "s1")
    graph.add_edge("s1", "gate")
    graph.add_edge("gate", "s3")
    graph.add_edge("s3", END)
    return graph


def sl_pause_runs(factory: PipelineFactory, runs: int) -> list[str]:
    """Start `runs` runs and run each to its pause (untimed); their run ids."""
    run_ids = []
    for _ in range(runs):
        result = factory.prepare().run()
        check(result.status == "paused", f"stageline run ended {result.status}, not paused")
        run_ids.append(result.run_id)
    return run_ids


def sl_resumed_ok(result: Any) -> None:
    check(
        result.status == "succeeded" and result.state == RESUMED_STATE,
        f"stageline resumed run ended {result.status} with {result.state}: {result.error}",
    )


def lg_pause_threads(app: Any, runs: int) -> list[dict[str, Any]]:
    """Invoke `runs` threads up to their interrupt (untimed); their configs."""
    configs = []
    for _ in range(runs):
        config = thread(new_thread_id("pause"))
        output = app.invoke({"n": 0}, config)
        check("__interrupt__" in output, f"LangGraph run did not interrupt: {output}")
        configs.append(config)
    return configs


def lg_resumed_ok(output: dict[str, Any]) -> None:
    check(output == RESUMED_STATE, f"LangGraph resumed run ended with {output}")


def sl_pause_resume(s: Settings) -> float:
    with Registry() as registry:
        factory = PipelineFactory(sl_pause_pipeline(), initial_state={"n": 0}, registry=registry)
        run_ids = sl_pause_runs(factory, s.resume_runs)
        start = time.perf_counter()
        for run_id in run_ids:
            sl_resumed_ok(factory.resume(run_id, patch={"approved": True}).run())
        elapsed = per(start, s.resume_runs)
        check(registry.stats()["resumed_fast"] == s.resume_runs, "a resume missed the fast path")
        return elapsed


def lg_pause_resume(s: Settings) -> float:
    app = lg_gate_builder().compile(checkpointer=InMemorySaver())
    configs = lg_pause_threads(app, s.resume_runs)
    start = time.perf_counter()
    for config in configs:
        lg_resumed_ok(app.invoke(Command(resume=True), config))
    return per(start, s.resume_runs)


def sl_slow_resume(s: Settings) -> float:
    pipeline = sl_pause_pipeline()
    with scratch_dir(s) as tmp:
        store = SqliteStore(tmp / "stageline.db")
        try:
            run_ids = sl_pause_runs(
                PipelineFactory(pipeline, store=store, initial_state={"n": 0}), s.slow_resume_runs
            )
            start = time.perf_counter()
            for run_id in run_ids:  # a new factory, no registry: the slow path every time
                factory = PipelineFactory(pipeline, store=store)
                sl_resumed_ok(factory.resume(run_id, patch={"approved": True}).run())
            return per(start, s.slow_resume_runs)
        finally:
            store.close()


def _lg_slow_resume(s: Settings, compile_each: bool) -> float:
    builder = lg_gate_builder()
    with scratch_dir(s) as tmp:
        conn = sqlite3.connect(tmp / "langgraph.db", check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            configs = lg_pause_threads(builder.compile(checkpointer=saver), s.slow_resume_runs)
            compiled = builder.compile(checkpointer=saver)
            start = time.perf_counter()
            for config in configs:
                app = builder.compile(checkpointer=saver) if compile_each else compiled
                lg_resumed_ok(app.invoke(Command(resume=True), config, durability="sync"))
            return per(start, s.slow_resume_runs)
        finally:
            conn.close()


def lg_slow_resume(s: Settings) -> float:
    return _lg_slow_resume(s, compile_each=True)


def lg_slow_resume_compiled_once(s: Settings) -> float:
    return _lg_slow_resume(s, compile_each=False)


# What a fresh process runs to resume: the same definitions as above, written out the way a
# user's script would, so that the child imports only the library it measures. argv[1] is
# the database, argv[2] the run or thread id. A wrong final state exits with status 3.

SL_COLD_RESUME = """
import sys
from stageline import Pause, Pipeline, PipelineFactory, Stage, Step
from stageline.stores import SqliteStore

def inc(state, ctx):
    return {"n": state["n"] + 1}

pipeline = Pipeline("pause3", [
    Stage("s1", order=1, steps=[Step("inc", inc)], router=lambda s, r: Pause("s3", timeout=300)),
    Stage("s2", order=2, steps=[Step("inc", inc)]),
    Stage("s3", order=3, steps=[Step("inc", inc)]),
])
store = SqliteStore(sys.argv[1])
result = PipelineFactory(pipeline, store=store).resume(sys.argv[2], patch={"approved": True}).run()
store.close()
sys.exit(0 if result.status == "succeeded" and result.state == {"n": 2, "approved": True} else 3)
"""

LG_COLD_RESUME = """
import sqlite3, sys
from typing import TypedDict
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

class GateState(TypedDict, total=False):
    n: int
    approved: bool

def inc(state):
    return {"n": state["n"] + 1}

def gate(state):
    return {"approved": interrupt("approve?")}

graph = StateGraph(GateState)
graph.add_node("s1", inc)
graph.add_node("gate", gate)
graph.add_node("s3", inc)
graph.add_edge(START, "s1")
graph.add_edge("s1", "gate")
graph.add_edge("gate", "s3")
graph.add_edge("s3", END)
conn = sqlite3.connect(sys.argv[1], check_same_thread=False)
app = graph.compile(checkpointer=SqliteSaver(conn))
config = {"configurable": {"thread_id": sys.argv[2]}}
output = app.invoke(Command(resume=True), config, durability="sync")
conn.close()
sys.exit(0 if output == {"n": 2, "approved": True} else 3)
"""


def _cold_resume(code: str, db: Path, run_id: str, cwd: Path) -> float:
    """Wall time of a fresh interpreter resuming one run, in microseconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(db), run_id], cwd=cwd, capture_output=True, text=True
    )
    elapsed = per(start, 1)
    check(proc.returncode == 0, f"cold resume exited {proc.returncode}: {proc.stderr.strip()}")
    return elapsed


def sl_cold_resume(s: Settings) -> float:
    with scratch_dir(s) as tmp:
        db = tmp / "stageline.db"
        store = SqliteStore(db)
        try:
            factory = PipelineFactory(sl_pause_pipeline(), store=store, initial_state={"n": 0})
            (run_id,) = sl_pause_runs(factory, 1)
        finally:
            store.close()
        return _cold_resume(SL_COLD_RESUME, db, run_id, tmp)


def lg_cold_resume(s: Settings) -> float:
    with scratch_dir(s) as tmp:
        db = tmp / "langgraph.db"
        conn = sqlite3.connect(db, check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            app = lg_gate_builder().compile(checkpointer=saver)
            (config,) = lg_pause_threads(app, 1)
        finally:
            conn.close()
        return _cold_resume(LG_COLD_RESUME, db, config["configurable"]["thread_id"], tmp)


# The memory probe runs in a child process (`bench.py --probe-paused-memory N`), so neither
# the other cases' garbage nor the paused runs' memory distorts anything else.

PROBE_FLAG = "--probe-paused-memory"
PROBE_WARMUP_RUNS = 50


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def paused_memory_probe(runs: int) -> dict[str, float]:
    """Pause `runs` runs held live by one Registry; RSS and thread growth."""
    with Registry() as registry:
        factory = PipelineFactory(sl_pause_pipeline(), initial_state={"n": 0}, registry=registry)
        sl_pause_runs(factory, PROBE_WARMUP_RUNS)  # pools, timers, caches: started before
        gc.collect()
        rss_before, threads_before = rss_bytes(), threading.active_count()
        sl_pause_runs(factory, runs)
        gc.collect()
        rss_after, threads_after = rss_bytes(), threading.active_count()
        live = registry.stats()["paused_live"]
        check(live == runs + PROBE_WARMUP_RUNS, f"registry holds {live} paused runs")
        return {
            "bytes_per_run": (rss_after - rss_before) / runs,
            "extra_threads": threads_after - threads_before,
            "threads_before": threads_before,
        }


@functools.cache
def probe_paused_memory(s: Settings) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, PROBE_FLAG, str(s.paused_live_runs)],
        capture_output=True,
        text=True,
    )
    check(proc.returncode == 0, f"memory probe exited {proc.returncode}: {proc.stderr.strip()}")
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def sl_paused_memory(s: Settings) -> float:
    return probe_paused_memory(s)["bytes_per_run"]


def sl_paused_threads(s: Settings) -> float:
    return probe_paused_memory(s)["extra_threads"]


# --------------------------------------------------------------------------- registry

Measure = Callable[[Settings], float]


@dataclass(frozen=True)
class Target:
    """A goal printed under the table, met or missed; a miss does not fail the bench."""

    of: str  # "ratio" (stageline / LangGraph) or "stageline" (its own figure)
    limit: float
    strict: bool = False  # `<` rather than `<=`

    def describe(self, unit: str) -> str:
        return f"{self.of} {'<' if self.strict else '<='} {self.show(self.limit, unit)}"

    def show(self, value: float, unit: str) -> str:
        if self.of == "ratio":
            return f"{value:.2f}"
        return format_value(value, unit) + (" µs" if unit == "us" else "")

    def met(self, value: float) -> bool:
        return value < self.limit if self.strict else value <= self.limit


@dataclass(frozen=True)
class Variant:
    """An information row under a case: another LangGraph (and maybe stageline) setup."""

    label: str
    langgraph: Measure | None  # None: no LangGraph figure (an information row)
    stageline: Measure | None = None  # None: reuse the case's stageline median
    unit: str | None = None  # None: the case's unit
    target: Target | None = None


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    stageline: Measure
    langgraph: Measure | None  # None: stageline only (an information row)
    unit: str = "us"  # "us", "bytes" or "threads"
    variants: tuple[Variant, ...] = ()
    reps: Callable[[Settings], int] | None = None  # None: settings.reps (1 for bytes)
    warmup: bool = True  # one untimed sample of each side first
    target: Target | None = None
    unavailable: Callable[[], str | None] | None = None  # why it cannot run here, or None


CASES: tuple[Case, ...] = (
    Case(
        "linear_100_stages_per_stage",
        "100 one-step stages, in memory; time per stage",
        sl_linear,
        lg_linear,
        variants=(Variant("langgraph no checkpointer", lg_linear_no_checkpointer),),
        target=Target("ratio", 0.25),
    ),
    Case(
        "fanout_4_steps_stage",
        "one stage of 4 concurrent steps and the join, in memory; time per run",
        sl_fanout,
        lg_fanout,
        target=Target("ratio", 0.3),
    ),
    Case(
        "children_4_pipelines_stage",
        "one stage of 4 child pipelines of one step each, in memory; time per run",
        sl_children,
        lg_children,
    ),
    Case(
        "durable_sqlite_stage_commit",
        "20 one-step stages on SQLite, each committed before the next; time per stage",
        sl_durable,
        lg_durable,
        variants=(
            Variant("langgraph default durability=async", lg_durable_default),
            Variant("floor: bare sqlite commits, no runtime", lg_durable, sqlite_commit_floor),
        ),
        target=Target("ratio", 0.25),
    ),
    Case(
        "durable_postgres_stage_commit",
        "the 20 stages above on PostgreSQL (stageline only; the SQLite figure beside it); "
        "time per stage",
        sl_durable_pg,
        None,
        variants=(Variant("stageline on sqlite synchronous=FULL", None, sl_durable),),
        unavailable=pg_unavailable,
    ),
    Case(
        "checkpoint_bytes_per_stage",
        "bytes of rows written per stage of a small state on SQLite (unit: bytes)",
        sl_bytes,
        lg_bytes,
        unit="bytes",
        variants=(Variant("sqlite WAL bytes", lg_wal_bytes, sl_wal_bytes),),
        target=Target("ratio", 0.1),
    ),
    Case(
        "throughput_1000_runs",
        "1,000 runs (200 with --quick) of 10 stages, 50 at a time, in memory; time per run",
        sl_throughput,
        lg_throughput,
        target=Target("ratio", 0.25),
    ),
    Case(
        "pause_resume_same_process",
        "resume a paused run in memory (registry fast path) to its next stage and the end; "
        "time per resume",
        sl_pause_resume,
        lg_pause_resume,
        target=Target("ratio", 0.2),
    ),
    Case(
        "slow_path_resume_sqlite",
        "resume a paused run from SQLite with a new factory (or a newly compiled graph) to "
        "its next stage and the end; time per resume",
        sl_slow_resume,
        lg_slow_resume,
        variants=(Variant("langgraph graph compiled once", lg_slow_resume_compiled_once),),
        target=Target("stageline", 2000.0, strict=True),
    ),
    Case(
        "cold_resume_fresh_process",
        "a new Python process imports the library and resumes a paused run from SQLite; "
        "wall time per process",
        sl_cold_resume,
        lg_cold_resume,
        reps=lambda s: s.cold_reps,
        target=Target("ratio", 0.3),
    ),
    Case(
        "live_paused_runs_memory",
        "10,000 (2,000 with --quick) paused runs held live by one Registry, in a child "
        "process: RSS growth per run (unit: bytes), and extra threads",
        sl_paused_memory,
        None,
        unit="bytes",
        variants=(
            Variant(
                "extra threads",
                None,
                sl_paused_threads,
                unit="threads",
                target=Target("stageline", 0.0),
            ),
        ),
        reps=lambda s: 1,
        warmup=False,
        target=Target("stageline", 10 * 1024.0, strict=True),
    ),
)


@dataclass(frozen=True)
class Row:
    case: str
    stageline: float
    langgraph: float | None  # None: an information row with no LangGraph figure
    unit: str
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.langgraph is None else self.stageline / self.langgraph

    def record(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "case": self.case,
            "stageline_us": round(self.stageline, 3),
            "langgraph_us": None if self.langgraph is None else round(self.langgraph, 3),
            "ratio": None if ratio is None else round(ratio, 4),
        }

    def target_line(self) -> str | None:
        if self.target is None:
            return None
        value = self.ratio if self.target.of == "ratio" else self.stageline
        if value is None:
            return None
        verdict = "met" if self.target.met(value) else "MISSED"
        shown = self.target.show(value, self.unit)
        return f"  {self.case}: {self.target.describe(self.unit)}: {verdict} ({shown})"


# --------------------------------------------------------------------------- running


def sample(measure: Measure, settings: Settings) -> float:
    gc.collect()  # start every sample from the same heap, whoever made the garbage
    return measure(settings)


def medians(
    measures: Sequence[Measure], settings: Settings, reps: int, warmup: bool = True
) -> list[float]:
    """Warm each measure up once, then sample them alternately `reps` times; medians."""
    if warmup:
        for measure in measures:
            sample(measure, settings)
    samples: list[list[float]] = [[] for _ in measures]
    for _ in range(reps):
        for i, measure in enumerate(measures):
            samples[i].append(sample(measure, settings))
    return [statistics.median(values) for values in samples]


def run_case(case: Case, settings: Settings) -> list[Row]:
    if case.reps is not None:
        reps = case.reps(settings)
    else:  # byte counts do not depend on warm caches or noise: one sample each
        reps = 1 if case.unit == "bytes" else settings.reps
    measures: list[Measure] = [case.stageline]  # index 0

    def slot(measure: Measure | None) -> int | None:
        if measure is None:
            return None
        measures.append(measure)
        return len(measures) - 1

    langgraph = slot(case.langgraph)
    variant_slots = [(slot(v.stageline), slot(v.langgraph)) for v in case.variants]
    values = medians(measures, settings, reps, case.warmup)

    def value(index: int | None) -> float | None:
        return None if index is None else values[index]

    stageline = values[0]
    rows = [Row(case.name, stageline, value(langgraph), case.unit, case.target)]
    for variant, (sl, lg) in zip(case.variants, variant_slots, strict=True):
        rows.append(
            Row(
                f"{case.name} ({variant.label})",
                stageline if sl is None else values[sl],
                value(lg),
                variant.unit or case.unit,
                variant.target,
            )
        )
    return rows


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value:,.0f} B"
    if unit == "threads":
        return f"{value:,.0f} threads"
    return f"{value:,.1f}"


def aligned(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a plain-text table: the first column left-aligned, the others right."""
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (value.rjust(width) for value, width in zip(values[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    return [line(header), "  ".join("-" * w for w in widths), *(line(c) for c in cells)]


def format_table(rows: Sequence[Row]) -> str:
    header = ("case", "stageline µs", "LangGraph µs", "ratio")
    cells = [
        (
            row.case,
            format_value(row.stageline, row.unit),
            format_value(row.langgraph, row.unit),
            "-" if row.ratio is None else f"{row.ratio:.2f}",
        )
        for row in rows
    ]
    out = aligned(header, cells)
    out.append("ratio = stageline / LangGraph, lower is better; medians of repetitions.")
    units = {row.unit for row in rows}
    if "bytes" in units:
        out.append(
            "Rows in B are bytes, not µs: written per stage (checkpoint_bytes_per_stage*), "
            "or RSS growth per paused run (live_paused_runs_memory)."
        )
    if "threads" in units:
        out.append("Rows in threads count threads alive after the runs paused, minus before.")
    if any(row.langgraph is None for row in rows):
        out.append("Rows with - in the LangGraph column are stageline-only information rows.")
    targets = [line for line in (row.target_line() for row in rows) if line is not None]
    if targets:
        out += ["targets (a missed target does not fail the bench):", *targets]
    return "\n".join(out)


# --------------------------------------------------------------------------- sweeps (--plot)
#
# How the cost of one stage changes with scale, on the one-step in-memory stages of the
# linear case: (a) more stages in one run; (b) more 10-stage runs started together. A point
# is a sample's wall time divided by the stages it ran (runs x stages), in microseconds.

SWEEP_SIZES = (10, 100, 1_000, 10_000)
SWEEP_QUICK_CAP = 1_000  # --quick stops both sweeps here
SWEEP_RUN_STAGES = 10  # stages of every run of the concurrent-runs sweep
SWEEP_MIN_STAGES = 1_000  # the stages sweep repeats short runs until a sample has this many
SWEEP_REPS = 3  # samples of a point that runs at most SWEEP_MIN_STAGES stages (else one)
SWEEP_WORKERS = 64  # LangGraph's threads in the concurrent-runs sweep: min(runs, 64)


def stages_sweep_runs(stages: int) -> int:
    """Runs per sample of the stages sweep: at least SWEEP_MIN_STAGES stages a sample."""
    return max(1, SWEEP_MIN_STAGES // stages)


def sl_stages_point(stages: int) -> float:
    runs = stages_sweep_runs(stages)
    factory = PipelineFactory(sl_linear_pipeline(stages), initial_state={"n": 0})
    start = time.perf_counter()
    for _ in range(runs):
        sl_run_ok(factory.prepare().run(), stages)
    return per(start, runs * stages)


def lg_stages_point(stages: int) -> float:
    runs = stages_sweep_runs(stages)
    app = lg_linear_graph(stages, InMemorySaver())  # 10,000 nodes compile in seconds: untimed
    limit = max(RECURSION_LIMIT, 2 * stages)  # one superstep per node
    start = time.perf_counter()
    for _ in range(runs):
        lg_run_ok(app.invoke({"n": 0}, thread(new_thread_id("stages"), limit)), stages)
    return per(start, runs * stages)


def sl_runs_point(runs: int) -> float:
    """`runs` runs started at once (`start()` returns a future), then all awaited."""
    factory = PipelineFactory(sl_linear_pipeline(SWEEP_RUN_STAGES), initial_state={"n": 0})
    start = time.perf_counter()
    futures = [factory.prepare().start() for _ in range(runs)]
    results = [future.result() for future in futures]
    elapsed = per(start, runs * SWEEP_RUN_STAGES)
    for result in results:
        sl_run_ok(result, SWEEP_RUN_STAGES)
    return elapsed


def lg_runs_point(runs: int) -> float:
    """`runs` invocations with distinct thread_ids on a pool of min(runs, 64) threads."""
    app = lg_linear_graph(SWEEP_RUN_STAGES, InMemorySaver())

    def invoke(_: int) -> dict[str, Any]:
        output: dict[str, Any] = app.invoke({"n": 0}, thread(new_thread_id("runs")))
        return output

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(runs, SWEEP_WORKERS)) as pool:
        outputs = list(pool.map(invoke, range(runs)))
    elapsed = per(start, runs * SWEEP_RUN_STAGES)
    for output in outputs:
        lg_run_ok(output, SWEEP_RUN_STAGES)
    return elapsed


@dataclass(frozen=True)
class Sweep:
    name: str
    title: str  # of its subplot
    x_label: str
    stageline: Callable[[int], float]
    langgraph: Callable[[int], float]
    stages: Callable[[int], int]  # stages one sample runs, at a given size


SWEEPS: tuple[Sweep, ...] = (
    Sweep(
        "stages_in_one_run",
        "(a) one run of N one-step stages",
        "N = stages in one run",
        sl_stages_point,
        lg_stages_point,
        lambda n: stages_sweep_runs(n) * n,
    ),
    Sweep(
        "concurrent_runs",
        f"(b) N runs of {SWEEP_RUN_STAGES} stages started together",
        "N = concurrent runs",
        sl_runs_point,
        lg_runs_point,
        lambda n: n * SWEEP_RUN_STAGES,
    ),
)


@dataclass(frozen=True)
class SweepPoint:
    sweep: str
    size: int
    stageline: float  # µs per stage, median of `samples`
    langgraph: float
    samples: int

    @property
    def ratio(self) -> float:
        return self.stageline / self.langgraph


def sweep_sizes(quick: bool) -> tuple[int, ...]:
    return tuple(n for n in SWEEP_SIZES if not quick or n <= SWEEP_QUICK_CAP)


def at(point: Callable[[int], float], size: int) -> Measure:
    return lambda settings: point(size)


def run_sweep(
    sweep: Sweep, sizes: Sequence[int], settings: Settings, reps: int = SWEEP_REPS
) -> list[SweepPoint]:
    """Every size, smallest first: each side warmed up once (at the first size), then
    sampled alternately, `reps` times where a sample is small and once where it is not."""
    points = []
    for size in sizes:
        samples = reps if sweep.stages(size) <= SWEEP_MIN_STAGES else 1
        print(f"  {sweep.name} N={size:,} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        measures = [at(sweep.stageline, size), at(sweep.langgraph, size)]
        stageline, langgraph = medians(measures, settings, samples, warmup=size == sizes[0])
        print(f"    done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        points.append(SweepPoint(sweep.name, size, stageline, langgraph, samples))
    gc.collect()  # LangGraph's largest points leave gigabytes of checkpoints behind
    return points


def format_sweeps(points: Sequence[SweepPoint]) -> str:
    header = ("sweep", "N", "samples", "stageline µs/stage", "LangGraph µs/stage", "ratio")
    cells = [
        (
            p.sweep,
            f"{p.size:,}",
            str(p.samples),
            f"{p.stageline:,.1f}",
            f"{p.langgraph:,.1f}",
            f"{p.ratio:.2f}",
        )
        for p in points
    ]
    out = aligned(header, cells)
    out.append(
        "µs per stage = a sample's wall time / (runs x stages); median of the samples; "
        "ratio = stageline / LangGraph."
    )
    return "\n".join(out)


def load_pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None if matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_sweeps(plt: Any, points: Sequence[SweepPoint], path: Path, title: str) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(
        1, len(SWEEPS), figsize=(12, 5.4), sharey=True, constrained_layout=True
    )
    for ax, sweep in zip(axes, SWEEPS, strict=True):
        mine = [p for p in points if p.sweep == sweep.name]
        sizes = [p.size for p in mine]
        for label, values, marker in (
            ("stageline", [p.stageline for p in mine], "o"),
            ("LangGraph (InMemorySaver)", [p.langgraph for p in mine], "s"),
        ):
            ax.plot(sizes, values, marker=marker, label=label)
            for x, y in zip(sizes, values, strict=True):
                ax.annotate(
                    f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=8
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(x=0.1, y=0.1)  # room for the labels of the end points
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.set_title(sweep.title, fontsize=10)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(sweep.x_label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("µs per stage (wall time / stages run)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def sweep_title(quick: bool, reps: int) -> str:
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    cpu = cpu_model()
    return (
        f"Cost per stage, in memory: stageline {metadata.version('stageline')} vs LangGraph "
        f"{metadata.version('langgraph')} ({'--quick' if quick else 'full'} sweep)\n"
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs{f' ({cpu})' if cpu else ''}{load} at start; each point: the "
        f"median of {reps} samples, or 1 sample where a sample runs over "
        f"{SWEEP_MIN_STAGES:,} stages"
    )


def environment(settings: Settings, quick: bool) -> str:
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (
        f"stageline {metadata.version('stageline')}, langgraph {metadata.version('langgraph')}, "
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs{load}; {'--quick' if quick else 'full'} run, "
        f"median of {settings.reps} repetitions"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [case.name for case in CASES]
    parser = argparse.ArgumentParser(
        description="Benchmark stageline against LangGraph on the same work.",
        epilog="cases: " + ", ".join(names),
    )
    parser.add_argument("--quick", action="store_true", help="less work and 3 repetitions")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument(
        "--reps",
        type=int,
        help="repetitions per case (default 5, quick 3), and per small sweep point (default 3)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write records as JSON")
    parser.add_argument("--tmpdir", help="where SQLite files go (default: the system temp)")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also run the scaling sweeps (stages per run, concurrent runs: 10 to 10,000, "
        "1,000 with --quick), print them and plot them into FILE.png (needs matplotlib)",
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="with --plot: run the sweeps, not the cases"
    )
    parser.add_argument(PROBE_FLAG, type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cases:
        args.cases = [name.strip() for name in args.cases.split(",") if name.strip()]
        unknown = [name for name in args.cases if name not in names]
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.plot_only and args.plot is None:
        parser.error("--plot-only needs --plot FILE.png")
    if args.plot_only and args.cases:
        parser.error("--plot-only runs no case: drop --cases or --plot-only")
    if args.plot is not None and not args.plot.parent.is_dir():
        parser.error(f"--plot: no directory {args.plot.parent}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe_paused_memory is not None:  # the child process of live_paused_runs_memory
        print(json.dumps(paused_memory_probe(args.probe_paused_memory)))
        return 0
    if StateGraph is None:
        print(
            "LangGraph is not installed; install the bench extra: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    plt = None
    if args.plot is not None:
        plt = load_pyplot()  # imported only now, and before minutes of work
        if plt is None:
            print("--plot needs matplotlib: pip install matplotlib", file=sys.stderr)
            return 2
    settings = QUICK if args.quick else FULL
    if args.reps is not None:
        settings = Settings(**{**settings.__dict__, "reps": args.reps})
    if args.tmpdir:
        settings = Settings(**{**settings.__dict__, "tmpdir": args.tmpdir})
    selected = [case for case in CASES if not args.cases or case.name in args.cases]

    if not args.plot_only:
        print(environment(settings, args.quick), flush=True)
        rows: list[Row] = []
        for case in selected:
            why_not = case.unavailable() if case.unavailable is not None else None
            if why_not is not None:
                print(f"  {case.name}: skipped: {why_not}", file=sys.stderr, flush=True)
                continue
            print(f"  {case.name}: {case.what} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                rows += run_case(case, settings)
            except BenchError as exc:
                print(f"{case.name}: {exc}", file=sys.stderr)
                return 1
            print(f"    done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        print(format_table(rows), flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps([row.record() for row in rows], indent=2) + "\n")
    if args.plot is not None:
        if not args.plot_only:
            print()
        return run_sweeps(plt, args.plot, settings, args.quick, args.reps or SWEEP_REPS)
    return 0


def run_sweeps(plt: Any, path: Path, settings: Settings, quick: bool, reps: int) -> int:
    title = sweep_title(quick, reps)
    print(f"sweeps for --plot: {title.replace(chr(10), '; ')}", flush=True)
    points: list[SweepPoint] = []
    started = time.perf_counter()
    for sweep in SWEEPS:
        try:
            points += run_sweep(sweep, sweep_sizes(quick), settings, reps)
        except BenchError as exc:
            print(f"{sweep.name}: {exc}", file=sys.stderr)
            return 1
    print(format_sweeps(points))
    print(f"sweeps took {time.perf_counter() - started:.0f}s", file=sys.stderr)
    plot_sweeps(plt, points, path, title)
    print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
