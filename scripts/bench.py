"""Side-by-side benchmark: stageline against LangGraph, on the same work, in one process.

    python scripts/bench.py [--quick] [--cases NAME[,NAME...]] [--reps N] [--json FILE]

Every case has one small function per library that builds what it needs (untimed), times
the work with `time.perf_counter` and returns one sample. Each side is warmed up once,
then the two sides are sampled alternately and the table shows the median sample. The
ratio is stageline / LangGraph: lower is better for stageline.

Units: microseconds, except `checkpoint_bytes_per_stage` whose numbers are bytes written
per stage (the JSON keys keep their `_us` names for every case). Rows marked in
parentheses are information rows: a variant of the case above on the LangGraph side (or
both sides for the WAL row), compared with the same kind of stageline figure.

LangGraph is used the idiomatic way: `StateGraph`, `add_node`, `add_edge`, `START`/`END`,
`compile(checkpointer=...)` and `invoke(input, {"configurable": {"thread_id": ...}})`. Its
default durability ("async": a step's checkpoint is written while the next step runs) is
used everywhere except `durable_sqlite_stage_commit`, which asks for `durability="sync"`:
that is stageline's guarantee (a stage is committed before the next one starts). An
information row shows the default there too.

Needs the `bench` extra: pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import sqlite3
import statistics
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

from stageline import Pipeline, PipelineFactory, Stage, Step
from stageline.stores import SqliteStore

try:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph
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
    concurrency: int = 50
    tmpdir: str | None = None


FULL = Settings(reps=5, linear_runs=5, fanout_runs=200, durable_runs=5, throughput_runs=1000)
QUICK = Settings(reps=3, linear_runs=3, fanout_runs=100, durable_runs=3, throughput_runs=200)

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


def thread(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": RECURSION_LIMIT}


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


def sl_fanout(s: Settings) -> float:
    factory = PipelineFactory(sl_fanout_pipeline(), initial_state={"n": 0})
    start = time.perf_counter()
    for _ in range(s.fanout_runs):
        result = factory.prepare().run()
        check(
            result.status == "succeeded" and all(result.state[k] == 1 for k in FANOUT_KEYS),
            f"stageline fan-out ended {result.status} with {result.state}: {result.error}",
        )
    return per(start, s.fanout_runs)


def lg_fanout(s: Settings) -> float:
    app = lg_fanout_graph(InMemorySaver())
    start = time.perf_counter()
    for _ in range(s.fanout_runs):
        output = app.invoke({"n": 0}, thread(new_thread_id("fanout")))
        check(all(output.get(k) == 1 for k in FANOUT_KEYS), f"LangGraph fan-out gave {output}")
    return per(start, s.fanout_runs)


def sl_durable(s: Settings) -> float:
    with scratch_dir(s) as tmp:
        store = SqliteStore(tmp / "stageline.db")  # synchronous=FULL, WAL
        try:
            factory = PipelineFactory(
                sl_linear_pipeline(DURABLE_STAGES), store=store, initial_state={"n": 0}
            )
            start = time.perf_counter()
            for _ in range(s.durable_runs):
                sl_run_ok(factory.prepare().run(), DURABLE_STAGES)
            return per(start, s.durable_runs * DURABLE_STAGES)
        finally:
            store.close()


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


# --------------------------------------------------------------------------- registry

Measure = Callable[[Settings], float]


@dataclass(frozen=True)
class Variant:
    """An information row under a case: another LangGraph (and maybe stageline) setup."""

    label: str
    langgraph: Measure
    stageline: Measure | None = None  # None: reuse the case's stageline median


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    stageline: Measure
    langgraph: Measure
    unit: str = "us"  # "us" or "bytes"
    variants: tuple[Variant, ...] = ()


CASES: tuple[Case, ...] = (
    Case(
        "linear_100_stages_per_stage",
        "100 one-step stages, in memory; time per stage",
        sl_linear,
        lg_linear,
        variants=(Variant("langgraph no checkpointer", lg_linear_no_checkpointer),),
    ),
    Case(
        "fanout_4_steps_stage",
        "one stage of 4 concurrent steps and the join, in memory; time per run",
        sl_fanout,
        lg_fanout,
    ),
    Case(
        "durable_sqlite_stage_commit",
        "20 one-step stages on SQLite, each committed before the next; time per stage",
        sl_durable,
        lg_durable,
        variants=(Variant("langgraph default durability=async", lg_durable_default),),
    ),
    Case(
        "checkpoint_bytes_per_stage",
        "bytes of rows written per stage of a small state on SQLite (unit: bytes)",
        sl_bytes,
        lg_bytes,
        unit="bytes",
        variants=(Variant("sqlite WAL bytes", lg_wal_bytes, sl_wal_bytes),),
    ),
    Case(
        "throughput_1000_runs",
        "1,000 runs (200 with --quick) of 10 stages, 50 at a time, in memory; time per run",
        sl_throughput,
        lg_throughput,
    ),
)


@dataclass(frozen=True)
class Row:
    case: str
    stageline: float
    langgraph: float
    unit: str

    @property
    def ratio(self) -> float:
        return self.stageline / self.langgraph

    def record(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "stageline_us": round(self.stageline, 3),
            "langgraph_us": round(self.langgraph, 3),
            "ratio": round(self.ratio, 4),
        }


# --------------------------------------------------------------------------- running


def sample(measure: Measure, settings: Settings) -> float:
    gc.collect()  # start every sample from the same heap, whoever made the garbage
    return measure(settings)


def medians(measures: Sequence[Measure], settings: Settings, reps: int) -> list[float]:
    """Warm each measure up once, then sample them alternately `reps` times; medians."""
    for measure in measures:
        sample(measure, settings)
    samples: list[list[float]] = [[] for _ in measures]
    for _ in range(reps):
        for i, measure in enumerate(measures):
            samples[i].append(sample(measure, settings))
    return [statistics.median(values) for values in samples]


def run_case(case: Case, settings: Settings) -> list[Row]:
    # Byte counts do not depend on warm caches or noise: one sample each.
    reps = 1 if case.unit == "bytes" else settings.reps
    variant_measures: list[Measure] = [v.langgraph for v in case.variants]
    variant_measures += [v.stageline for v in case.variants if v.stageline is not None]
    values = iter(medians([case.stageline, case.langgraph, *variant_measures], settings, reps))
    stageline, langgraph = next(values), next(values)
    variant_lg = [next(values) for _ in case.variants]
    rows = [Row(case.name, stageline, langgraph, case.unit)]
    for variant, lg in zip(case.variants, variant_lg, strict=True):
        sl = next(values) if variant.stageline is not None else stageline
        rows.append(Row(f"{case.name} ({variant.label})", sl, lg, case.unit))
    return rows


def format_value(value: float, unit: str) -> str:
    return f"{value:,.0f} B" if unit == "bytes" else f"{value:,.1f}"


def format_table(rows: Sequence[Row]) -> str:
    header = ("case", "stageline µs", "LangGraph µs", "ratio")
    cells = [
        (
            row.case,
            format_value(row.stageline, row.unit),
            format_value(row.langgraph, row.unit),
            f"{row.ratio:.2f}",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (value.rjust(width) for value, width in zip(values[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    out = [line(header), "  ".join("-" * w for w in widths), *(line(c) for c in cells)]
    out.append("ratio = stageline / LangGraph, lower is better; medians of repetitions.")
    if any(row.unit == "bytes" for row in rows):
        out.append("Rows in B are bytes written per stage, not microseconds.")
    return "\n".join(out)


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
    parser.add_argument("--reps", type=int, help="repetitions per case (default 5, quick 3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write records as JSON")
    parser.add_argument("--tmpdir", help="where SQLite files go (default: the system temp)")
    args = parser.parse_args(argv)
    if args.cases:
        args.cases = [name.strip() for name in args.cases.split(",") if name.strip()]
        unknown = [name for name in args.cases if name not in names]
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if StateGraph is None:
        print(
            "LangGraph is not installed; install the bench extra: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    settings = QUICK if args.quick else FULL
    if args.reps is not None:
        settings = Settings(**{**settings.__dict__, "reps": args.reps})
    if args.tmpdir:
        settings = Settings(**{**settings.__dict__, "tmpdir": args.tmpdir})
    selected = [case for case in CASES if not args.cases or case.name in args.cases]

    print(environment(settings, args.quick), flush=True)
    rows: list[Row] = []
    for case in selected:
        print(f"  {case.name}: {case.what} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            rows += run_case(case, settings)
        except BenchError as exc:
            print(f"{case.name}: {exc}", file=sys.stderr)
            return 1
        print(f"    done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([row.record() for row in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
