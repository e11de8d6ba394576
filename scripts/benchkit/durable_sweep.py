"""The durable-throughput sweep of --durable-sweep: runs per second against runs in flight.

Runs of 10 one-step stages on SQLite (WAL, synchronous=FULL) for every library: stageline
on a SqliteStore (`prepare().start()`, at most N runs in flight), LangGraph on a
SqliteSaver with `durability="sync"` (N threads calling `invoke()`), DBOS on its SQLite
system database (N threads calling the workflow). Each point runs max(RUNS_MIN, 2N) runs
(RUNS_MIN_QUICK with --quick), one sample per library on a new file, after one untimed
warm-up sample of each, and reports runs per second: runs / wall time.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import dbos_peer
from .durable_cases import lg_runs_sqlite, sl_runs_sqlite
from .report import aligned
from .settings import Settings
from .timing import sample

IN_FLIGHT = (1, 10, 50, 100, 500, 1_000)
IN_FLIGHT_QUICK = (1, 10, 50, 100)
RUNS_MIN = 100
RUNS_MIN_QUICK = 50
WARMUP_RUNS = 10  # runs of each library's untimed warm-up sample
PointFn = Callable[..., float]  # (settings, runs=, in_flight=) -> µs per run
LIBRARIES: tuple[tuple[str, PointFn | None], ...] = (
    ("stageline", sl_runs_sqlite),
    ("LangGraph", lg_runs_sqlite),
    ("DBOS", dbos_peer.db_runs_point if dbos_peer.INSTALLED else None),
)


@dataclass(frozen=True)
class DurablePoint:
    library: str
    in_flight: int
    runs: int
    runs_per_s: float


def sweep_runs(in_flight: int, quick: bool) -> int:
    return max(RUNS_MIN_QUICK if quick else RUNS_MIN, 2 * in_flight)


def run_durable_sweep(settings: Settings, quick: bool) -> list[DurablePoint]:
    """Every point, smallest first, after one untimed warm-up sample of each library."""
    for _, point in LIBRARIES:
        if point is not None:
            point(settings, runs=WARMUP_RUNS, in_flight=1)
    points = []
    for n in IN_FLIGHT_QUICK if quick else IN_FLIGHT:
        runs = sweep_runs(n, quick)
        for library, point in LIBRARIES:
            if point is None:
                continue
            print(f"  durable sweep: {library}, {n:,} in flight ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            us = sample(functools.partial(point, runs=runs, in_flight=n), settings)
            print(f"    done in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            points.append(DurablePoint(library, n, runs, 1e6 / us))
    return points


def format_durable_sweep(points: Sequence[DurablePoint]) -> str:
    sizes = sorted({p.in_flight for p in points})
    libraries = [name for name, fn in LIBRARIES if fn is not None]
    by = {(p.library, p.in_flight): p for p in points}
    header = ("in flight", "runs", *(f"{name} runs/s" for name in libraries))
    cells = [
        (
            f"{n:,}",
            f"{by[(libraries[0], n)].runs:,}",
            *(f"{by[(name, n)].runs_per_s:,.0f}" for name in libraries),
        )
        for n in sizes
    ]
    out = aligned(header, cells)
    out.append("runs of 10 durable stages on SQLite (synchronous=FULL); one sample per point.")
    return "\n".join(out)
