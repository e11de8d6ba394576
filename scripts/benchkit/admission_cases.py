"""`bench.py --admission`: what admission (spec section 20) costs, stageline only.

    python scripts/bench.py --admission [--reps N] [--queued N] [--busy-reps N]
                                        [--stores memory,sqlite,postgres] [--json FILE]

No peer does this, so there is no ratio against a peer: each figure is printed beside its
target.

- start cost, no contention: `prepare().run()` of a one-stage pipeline (one trivial step)
  with and without `limits=[Limit("api", 1000)]`, through one Registry, alternated; the
  median of `--reps` (default 300) each, and the difference (the `Store.admit` of the
  start, and the slot's bookkeeping). Targets: under 0.5 ms added on SQLite, under 1 ms on
  PostgreSQL (memory: information only).
- queued runs and the running ones: the time per stage commit of a 20-stage pipeline
  (trivial steps, `Limit("api", 1000)`, priority 1) run alone, then while `--queued`
  (default 5,000) runs of another pipeline sharing the limit (`Limit("api", 1)`, held by
  one run blocked in its step) wait "queued" in the same Registry, whose admission passes
  run every 0.05 s and whose lease renewals cover them. Median of `--busy-reps` (default
  10) runs each. Target: under 10 % slower.

PostgreSQL is the server of $STAGELINE_BENCH_PG_DSN (a schema of its own, dropped after);
skipped, with a note, when it does not answer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stageline import Limit, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.testing import wait_for_stats

from .time_cases import (
    Figure,
    Place,
    add_place_args,
    parsed_places,
    postgres_place,
    run_figures,
    sqlite_place,
)
from .timing import check

FLAG = "--admission"
STAGES = 20
START_TARGETS_MS = {"sqlite": 0.5, "postgres": 1.0}
SLOWDOWN_TARGET = 1.10


def noop(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {}


def one_stage(pipeline_id: str, limits: Sequence[Limit] = ()) -> Pipeline:
    return Pipeline(pipeline_id, [Stage("one", 1, steps=[Step("one", noop)])], limits=limits)


def twenty_stages() -> Pipeline:
    stages = [Stage(f"s{i:02d}", i + 1, steps=[Step(f"s{i:02d}", noop)]) for i in range(STAGES)]
    return Pipeline("busy", stages, limits=[Limit("api", 1000)])


@contextmanager
def memory_place(tmp: Path, label: str = "runs") -> Iterator[Place]:
    from stageline.stores import MemoryStore

    store = MemoryStore()
    yield Place("memory", "memory://", lambda **kw: _Unclosed(store))


class _Unclosed:
    """A MemoryStore that outlives `close()` (each figure opens the place again)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def close(self) -> None:
        pass


PLACES: dict[str, Callable[..., Any]] = {
    "memory": memory_place,
    "sqlite": sqlite_place,
    "postgres": postgres_place,
}


# --- (a) the cost of admission on a start ---------------------------------------------------


def start_costs(place: Place, reps: int) -> tuple[list[float], list[float]]:
    """Seconds of `prepare().run()` without limits and with one, alternated, `reps` each."""
    store = place.open()
    try:
        with Registry() as registry:
            plain = PipelineFactory(one_stage("plain"), store=store, registry=registry)
            limited = PipelineFactory(one_stage("limited", [Limit("api", 1000)]), store=store,
                                      registry=registry)  # fmt: skip
            for factory in (plain, limited):  # warm up both
                check(factory.prepare().run(timeout=30).status == "succeeded", "warm-up failed")
            without, with_limit = [], []
            for _ in range(reps):
                without.append(timed_run(plain))
                with_limit.append(timed_run(limited))
            return without, with_limit
    finally:
        store.close()


def timed_run(factory: PipelineFactory, priority: int = 0) -> float:
    started = time.perf_counter()
    result = factory.prepare(priority=priority).run(timeout=60)
    took = time.perf_counter() - started
    check(result.status == "succeeded", f"a run ended {result.status}")
    return took


# --- (b) stage commits while many runs wait queued ------------------------------------------


def commit_times(place: Place, queued: int, reps: int) -> tuple[list[float], list[float]]:
    """Seconds per stage commit of the 20-stage run: alone, then with `queued` runs waiting."""
    store = place.open()
    gate = threading.Event()

    def blocked(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        gate.wait(600)
        return {}

    waiting = Pipeline("waiting", [Stage("one", 1, steps=[Step("one", blocked)])],
                       limits=[Limit("api", 1)])  # fmt: skip
    try:
        with Registry() as registry:
            busy = PipelineFactory(twenty_stages(), store=store, registry=registry)
            waiters = PipelineFactory(waiting, store=store, registry=registry)
            timed_run(busy, priority=1)  # warm up
            alone = [timed_run(busy, priority=1) / STAGES for _ in range(reps)]
            futures = [waiters.prepare().start()]  # holds the waiters' one slot
            futures += [waiters.prepare().start() for _ in range(queued)]
            wait_for_stats(registry, timeout=600, queued=queued)
            loaded = [timed_run(busy, priority=1) / STAGES for _ in range(reps)]
            check(registry.stats()["queued"] == queued, "a queued run was admitted meanwhile")
            gate.set()  # the registry stops with the others still queued (in a store dropped)
            check(futures[0].result(60).status == "succeeded", "the holding run failed")
            return alone, loaded
    finally:
        gate.set()
        store.close()


# --- one store ------------------------------------------------------------------------------


def measure_place(name: str, args: argparse.Namespace, tmp: Path) -> list[Figure]:
    """Every figure on one store."""
    print(f"  {name}: {args.reps} starts each way, {args.queued:,} queued ...",
          file=sys.stderr, flush=True)  # fmt: skip
    started = time.perf_counter()
    with PLACES[name](tmp, "starts") as place:
        without, with_limit = start_costs(place, args.reps)
    with PLACES[name](tmp, "queued") as place:
        alone, loaded = commit_times(place, args.queued, args.busy_reps)
    print(f"    done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    bare, limited = statistics.median(without) * 1000, statistics.median(with_limit) * 1000
    quiet, busy = statistics.median(alone) * 1000, statistics.median(loaded) * 1000
    reps, n = f"median of {args.reps}", f"{args.queued:,}"
    return [
        Figure(name, f"start to end, 1 stage, no limit ({reps})", bare, "ms"),
        Figure(name, f"start to end, 1 stage, Limit('api', 1000) ({reps})", limited, "ms"),
        Figure(name, "added by admission (difference of the medians)", limited - bare, "ms",
               START_TARGETS_MS.get(name)),
        Figure(name, f"stage commit, 20-stage run alone (median of {args.busy_reps})",
               quiet, "ms"),
        Figure(name, f"stage commit, with {n} runs queued on its limit", busy, "ms"),
        Figure(name, f"ratio: with {n} queued / alone", busy / quiet, "x", SLOWDOWN_TARGET),
    ]  # fmt: skip


# --- the command ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py --admission",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--reps", type=int, default=300, help="starts timed each way per store")
    parser.add_argument("--queued", type=int, default=5000, help="runs waiting queued")
    parser.add_argument("--busy-reps", type=int, default=10, help="20-stage runs timed each way")
    add_place_args(parser, "memory,sqlite,postgres")
    args = parsed_places(parser, argv, tuple(PLACES))
    if args.reps < 1 or args.queued < 1 or args.busy_reps < 1:
        parser.error("--reps, --queued and --busy-reps must be >= 1")
    return args


def main(argv: Sequence[str]) -> int:
    return run_figures(parse_args(argv), "admission", "admits runs", measure_place)
