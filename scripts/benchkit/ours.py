"""The stageline side of every case: its pipelines, and a function per case giving a sample.

The work is the same trivial action on both sides: read `n`, return a patch.

Pause and resume: a 3-stage pipeline whose first stage pauses and resumes at the third
(the second is skipped); the resume patch `{"approved": True}` is committed with the
claim. LangGraph's equivalent: s1 -> gate -> s3, where `gate` calls `interrupt()` and
returns the value it is resumed with, and `Command(resume=True)` resumes it; that gate node
runs again on resume, which is how LangGraph resumes. Both end with RESUMED_STATE.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.stores import SqliteStore

from .pg import PG_DSN, scratch_schema
from .settings import (
    DURABLE_STAGES,
    FANOUT_KEYS,
    LINEAR_STAGES,
    RESUMED_STATE,
    THROUGHPUT_STAGES,
    WARM_RUNS,
    Settings,
)
from .timing import check, per, scratch_dir, wal_size


def sl_inc(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"n": state["n"] + 1}


def sl_fan(key: str) -> Callable[..., dict[str, Any]]:
    def step(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {key: state["n"] + 1}

    return step


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


def sl_run_ok(result: Any, expected_n: int) -> None:
    check(
        result.status == "succeeded" and result.state.get("n") == expected_n,
        f"stageline run ended {result.status} with {result.state}: {result.error}",
    )


def sl_linear(s: Settings) -> float:
    factory = PipelineFactory(sl_linear_pipeline(LINEAR_STAGES), initial_state={"n": 0})
    start = time.perf_counter()
    for _ in range(s.linear_runs):
        sl_run_ok(factory.prepare().run(), LINEAR_STAGES)
    return per(start, s.linear_runs * LINEAR_STAGES)


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


def sl_fanout(s: Settings) -> float:
    return _sl_fan_runs(sl_fanout_pipeline(), s.fanout_runs, "fan-out")


def sl_children(s: Settings) -> float:
    return _sl_fan_runs(sl_children_pipeline(), s.fanout_runs, "child pipelines")


def sl_durable(s: Settings) -> float:
    with scratch_dir(s) as tmp:
        store = SqliteStore(tmp / "stageline.db")  # synchronous=FULL, WAL
        try:
            return sl_durable_runs(store, s)
        finally:
            store.close()


def sl_durable_runs(store: Any, s: Settings) -> float:
    """Time per stage of `durable_runs` runs of the 20-stage pipeline on `store`."""
    factory = PipelineFactory(
        sl_linear_pipeline(DURABLE_STAGES), store=store, initial_state={"n": 0}
    )
    start = time.perf_counter()
    for _ in range(s.durable_runs):
        sl_run_ok(factory.prepare().run(), DURABLE_STAGES)
    return per(start, s.durable_runs * DURABLE_STAGES)


def sl_durable_pg(s: Settings) -> float:
    """sl_durable on PostgreSQL, in a schema of its own, dropped afterwards."""
    with pg_store() as store:
        return sl_durable_runs(store, s)


@contextmanager
def pg_store() -> Iterator[Any]:
    """A PostgresStore (its default pool of 10) in a scratch schema."""
    from stageline.stores import PostgresStore

    with scratch_schema("stageline_bench") as schema:
        store = PostgresStore(PG_DSN, schema=schema)
        try:
            yield store
        finally:
            store.close()


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
            wal_before = wal_size(db)
            run = factory.prepare()
            query = "SELECT length(state) FROM runs WHERE run_id = ?"
            state_bytes = [reader.execute(query, (run.run_id,)).fetchone()[0]]  # create_run

            def committed(event: Any) -> None:  # called after each commit, on the run's thread
                state_bytes.append(reader.execute(query, (run.run_id,)).fetchone()[0])

            run.on("pipeline:start", committed)
            run.on("stage:success", committed)
            sl_run_ok(run.run(), DURABLE_STAGES)
            wal_bytes = wal_size(db) - wal_before
            (event_bytes,) = reader.execute(
                "SELECT sum(length(data)) FROM events WHERE run_id = ?", (run.run_id,)
            ).fetchone()
            return (sum(state_bytes) + event_bytes) / DURABLE_STAGES, wal_bytes / DURABLE_STAGES
        finally:
            reader.close()
            store.close()


def sl_bytes(s: Settings) -> float:
    return _sl_bytes(s)[0]


def sl_wal_bytes(s: Settings) -> float:
    return _sl_bytes(s)[1]


def sl_throughput(s: Settings) -> float:
    return sl_concurrent(None, s.throughput_runs, s.concurrency)


def sl_throughput_pooled(s: Settings) -> float:
    return sl_pooled(None, s.throughput_runs, s.concurrency)


Harness = Callable[[Any, int, int], float]
"""How a throughput sample starts its runs: (store, runs, in flight) -> time per run."""


def sl_pooled(store: Any, runs: int, in_flight: int) -> float:
    """Time per run of `runs` 10-stage runs, each `prepare().run()` on one of `in_flight`
    threads: the peers' shape (each run is created on its own thread, so on a durable
    store the runs' creations are grouped like their commits, not made one at a time)."""
    factory = _warm_throughput_factory(store)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        results = list(pool.map(lambda _: factory.prepare().run(), range(runs)))
    elapsed = per(start, runs)
    for result in results:
        sl_run_ok(result, THROUGHPUT_STAGES)
    return elapsed


def sl_concurrent(store: Any, runs: int, in_flight: int) -> float:
    """Time per run of `runs` 10-stage runs, at most `in_flight` at a time, on `store`
    (None: the default MemoryStore)."""
    factory = _warm_throughput_factory(store)
    slots = threading.BoundedSemaphore(in_flight)

    def release(_: Any) -> None:
        slots.release()

    start = time.perf_counter()
    futures = []
    for _ in range(runs):
        slots.acquire()
        future = factory.prepare().start()
        future.add_done_callback(release)
        futures.append(future)
    for future in futures:
        sl_run_ok(future.result(), THROUGHPUT_STAGES)
    return per(start, runs)


def _warm_throughput_factory(store: Any) -> PipelineFactory:
    """The throughput cases' factory on `store`, after WARM_RUNS untimed runs (the
    store's first commits, the pools' threads)."""
    factory = PipelineFactory(
        sl_linear_pipeline(THROUGHPUT_STAGES), store=store, initial_state={"n": 0}
    )
    for _ in range(WARM_RUNS):
        sl_run_ok(factory.prepare().run(), THROUGHPUT_STAGES)
    return factory


def sl_pause_router(state: dict[str, Any], results: Any) -> Pause:
    return Pause("s3", timeout=300)


def sl_pause_pipeline(pipeline_id: str = "pause3", last: Any = sl_inc) -> Pipeline:
    """s1 pauses, resuming at s3 (s2 is skipped); `last` is s3's step action."""
    return Pipeline(
        pipeline_id,
        [
            Stage("s1", order=1, steps=[Step("inc", sl_inc)], router=sl_pause_router),
            Stage("s2", order=2, steps=[Step("inc", sl_inc)]),
            Stage("s3", order=3, steps=[Step("inc" if last is sl_inc else "mark", last)]),
        ],
    )


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
