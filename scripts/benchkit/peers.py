"""The LangGraph side of every case: its graphs, and a function per case giving a sample.

LangGraph is used the idiomatic way: `StateGraph`, `add_node`, `add_edge`, `START`/`END`,
`compile(checkpointer=...)` and `invoke(input, {"configurable": {"thread_id": ...}})`. The
work is the same trivial action as stageline's: read `n`, return a partial update.

Its leanest setup is used. In memory (`InMemorySaver`), `durability="exit"`: the
checkpoint is saved once, when the invocation ends (done, failed or interrupted). A
process's memory survives no crash, so per-step checkpoints in memory buy nothing a
stageline MemoryStore run has; LangGraph's default ("async": every step's checkpoint is
handed to a background thread) costs about 1.6 times as much per node, and is shown as
an information row. On SQLite or PostgreSQL, `durability="sync"`: stageline's guarantee.

Pause and resume: a 3-stage pipeline whose first stage pauses and resumes at the third
(the second is skipped); the resume patch `{"approved": True}` is committed with the
claim. LangGraph's equivalent: s1 -> gate -> s3, where `gate` calls `interrupt()` and
returns the value it is resumed with, and `Command(resume=True)` resumes it; that gate node
runs again on resume, which is how LangGraph resumes. Both end with RESUMED_STATE.

`INSTALLED` is false when LangGraph is not installed; bench.py then refuses to run.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict

from .settings import (
    DURABLE_STAGES,
    FANOUT_KEYS,
    LINEAR_STAGES,
    RECURSION_LIMIT,
    RESUMED_STATE,
    THROUGHPUT_STAGES,
    Settings,
)
from .timing import check, per, scratch_dir, wal_size

try:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt
except ImportError:  # pragma: no cover - reported by bench.py's main()
    StateGraph = None  # type: ignore[assignment,misc]

INSTALLED = StateGraph is not None


class Counter(TypedDict):
    n: int


class FanState(TypedDict, total=False):
    n: int
    a: int  # one key per branch: concurrent updates never touch the same channel
    b: int
    c: int
    d: int


class GateState(TypedDict, total=False):
    n: int
    approved: bool


def lg_inc(state: Counter) -> dict[str, Any]:
    return {"n": state["n"] + 1}


def lg_fan(key: str) -> Callable[..., dict[str, Any]]:
    def node(state: FanState) -> dict[str, Any]:
        return {key: state["n"] + 1}

    return node


def lg_join(state: FanState) -> None:
    """The barrier LangGraph needs to wait for every branch; it changes nothing."""
    return None


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


def lg_run_ok(output: dict[str, Any], expected_n: int) -> None:
    check(output.get("n") == expected_n, f"LangGraph run ended with {output}")


IN_MEMORY = {"durability": "exit"}  # the leanest setup in memory: see the docstring
DEFAULT: dict[str, Any] = {}  # LangGraph's default durability, "async"


def _lg_linear(s: Settings, checkpointer: Any, options: dict[str, Any]) -> float:
    app = lg_linear_graph(LINEAR_STAGES, checkpointer)
    start = time.perf_counter()
    for _ in range(s.linear_runs):
        output = app.invoke({"n": 0}, thread(new_thread_id("linear")), **options)
        lg_run_ok(output, LINEAR_STAGES)
    return per(start, s.linear_runs * LINEAR_STAGES)


def lg_linear(s: Settings) -> float:
    return _lg_linear(s, InMemorySaver(), IN_MEMORY)


def lg_linear_default(s: Settings) -> float:
    return _lg_linear(s, InMemorySaver(), DEFAULT)


def lg_linear_no_checkpointer(s: Settings) -> float:
    return _lg_linear(s, None, DEFAULT)


def _lg_fan_runs(app: Any, runs: int, what: str) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        output = app.invoke({"n": 0}, thread(new_thread_id(what)), **IN_MEMORY)
        check(all(output.get(k) == 1 for k in FANOUT_KEYS), f"LangGraph {what} gave {output}")
    return per(start, runs)


def lg_fanout(s: Settings) -> float:
    return _lg_fan_runs(lg_fanout_graph(InMemorySaver()), s.fanout_runs, "fan-out")


def lg_children(s: Settings) -> float:
    return _lg_fan_runs(lg_subgraph_fanout_graph(InMemorySaver()), s.fanout_runs, "subgraphs")


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
            wal_before = wal_size(db)
            lg_run_ok(app.invoke({"n": 0}, thread(thread_id), durability="sync"), DURABLE_STAGES)
            wal_bytes = wal_size(db) - wal_before
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


def lg_bytes(s: Settings) -> float:
    return _lg_bytes(s)[0]


def lg_wal_bytes(s: Settings) -> float:
    return _lg_bytes(s)[1]


def lg_throughput(s: Settings) -> float:
    app = lg_linear_graph(THROUGHPUT_STAGES, InMemorySaver())

    def invoke(i: int) -> dict[str, Any]:
        config = thread(new_thread_id("throughput"))
        output: dict[str, Any] = app.invoke({"n": 0}, config, **IN_MEMORY)
        return output

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=s.concurrency) as pool:
        outputs = list(pool.map(invoke, range(s.throughput_runs)))
    elapsed = per(start, s.throughput_runs)
    for output in outputs:
        lg_run_ok(output, THROUGHPUT_STAGES)
    return elapsed


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


def _lg_pause_resume(s: Settings, options: dict[str, Any]) -> float:
    app = lg_gate_builder().compile(checkpointer=InMemorySaver())
    configs = lg_pause_threads(app, s.resume_runs)
    start = time.perf_counter()
    for config in configs:
        lg_resumed_ok(app.invoke(Command(resume=True), config, **options))
    return per(start, s.resume_runs)


def lg_pause_resume(s: Settings) -> float:
    return _lg_pause_resume(s, IN_MEMORY)


def lg_pause_resume_default(s: Settings) -> float:
    return _lg_pause_resume(s, DEFAULT)


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
