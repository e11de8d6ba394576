"""The scaling sweeps of --plot: the cost of one stage as runs grow longer or more numerous.

Both sweeps run the one-step in-memory stages of the linear case: (a) more stages in one
run; (b) more 10-stage runs started together. A point is a sample's wall time divided by
the stages it ran (runs x stages), in microseconds.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from stageline import PipelineFactory

from .ours import sl_linear_pipeline, sl_run_ok
from .peers import InMemorySaver, lg_linear_graph, lg_run_ok, new_thread_id, thread
from .settings import RECURSION_LIMIT, Settings
from .timing import Measure, medians, per

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
