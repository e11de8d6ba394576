"""Soak: thousands of runs through one Registry, with every kind of trouble mixed in.

    python scripts/soak.py --runs 5000 --concurrency 16 [--db soak.db] [--seed 1]

Each run draws a scenario (seeded): succeed; pause then resume on the fast path (live
window) or the slow path (exported at once); pause then abort while paused; a step that
fails once and is retried by the step's `retries`, by the registry's RetryPolicy, or by
hand with `registry.retry`; abort while a step runs; fail for good. `concurrency` driver
threads run scenarios side by side against one SqliteStore.

Afterwards it checks that every run is in the state its scenario expects, that the
store's journal of every run is consistent with its state (tests/invariants.py), that no
thread was left behind (`threading.active_count()` back to its baseline, measured once
the step pool is warm) and reports the RSS growth. Prints one JSON line; exit status 1 if
a check failed. tests/test_soak.py runs it at a bounded size in CI.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared invariant checker

from invariants import check_run  # noqa: E402

from stageline import Pause, Pipeline, PipelineFactory, Registry, RetryPolicy, Stage, Step  # noqa: E402
from stageline.actors.workers import shared_workers  # noqa: E402
from stageline.stores import SqliteStore  # noqa: E402


class Transient(Exception):
    """Fails once; the registry's RetryPolicy restarts runs that failed with it."""


class Permanent(Exception):
    """Not covered by the RetryPolicy: the run stays failed until retried by hand."""


SCENARIOS = {
    # name: (weight, expected final status)
    "succeed": (4, "succeeded"),
    "pause_fast": (3, "succeeded"),
    "pause_slow": (2, "succeeded"),
    "pause_abort": (1, "aborted"),
    "step_retry": (2, "succeeded"),
    "policy_retry": (2, "succeeded"),
    "manual_retry": (2, "succeeded"),
    "abort_running": (1, "aborted"),
    "fail": (1, "failed"),
}


class Soak:
    """The pipeline and the per-run bookkeeping its steps use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.started: dict[str, threading.Event] = {}
        self.local = threading.local()  # the scenario of the run a driver thread prepares

    def _failing(self, run_id: str, what: str, times: int) -> bool:
        """True for the first `times` attempts of `what` in this run."""
        with self.lock:
            self.attempts[(run_id, what)] += 1
            return self.attempts[(run_id, what)] <= times

    def work(self, state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        kind = state["kind"]
        # The step has retries=1: failing twice fails the stage, hence the run.
        if kind == "step_retry" and self._failing(ctx.run_id, "step", 1):
            raise ValueError("flaky once")
        if kind == "policy_retry" and self._failing(ctx.run_id, "policy", 2):
            raise Transient("restart me")
        if kind == "manual_retry" and self._failing(ctx.run_id, "manual", 2):
            raise Permanent("retry me by hand")
        if kind == "fail":
            raise Permanent("always")
        if kind == "abort_running":
            with self.lock:
                started = self.started[ctx.run_id]
            started.set()
            ctx.aborted.wait(30)  # a well-behaved long step: it polls ctx.aborted
        return {"work": {"n": state.get("n", 0) + 1}}

    def collect(self, state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        ctx.artifacts.put("note", {"kind": state["kind"], "blob": b"\x00" * 64})
        return {"collected": True}

    def finish(self, state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        note = ctx.artifacts.get("note")
        return {"finished": note is not None and note["kind"] == state["kind"]}

    def pipeline(self) -> Pipeline:
        def route(state: dict[str, Any], results: dict[str, Any]) -> Any:
            kind = state["kind"]
            if kind == "pause_fast" or kind == "pause_abort":
                return Pause("finish", timeout=3600.0)
            if kind == "pause_slow":
                return Pause("finish", timeout=0)  # exported at once: resumes from the store
            return None

        return Pipeline(
            "soak",
            [
                Stage("collect", 1, steps=[Step("collect", self.collect)], router=route),
                Stage(
                    "work",
                    2,
                    steps=[Step("work", self.work, retries=1), Step("side", lambda s, c: None)],
                ),
                Stage("finish", 3, steps=[Step("finish", self.finish)]),
            ],
        )


def make_factory(soak: Soak, store: Any, registry: Registry) -> PipelineFactory:
    return PipelineFactory(
        soak.pipeline(),
        store=store,
        registry=registry,
        initial_state=lambda: {"kind": soak.local.kind},
    )


def drive(soak: Soak, factory: PipelineFactory, registry: Registry, kind: str, i: int) -> str:
    """Run one scenario to its end; return the run's final status."""
    run_id = f"soak-{i:06d}-{kind}"
    if kind == "abort_running":
        with soak.lock:
            soak.started[run_id] = threading.Event()
    soak.local.kind = kind  # read by the factory's initial_state, in this thread
    context = factory.prepare(run_id=run_id)
    if kind == "abort_running":
        future = context.start()
        if not soak.started[run_id].wait(30):
            raise AssertionError(f"{run_id}: the step never started")
        context.abort("soak")
        return future.result(30).status
    result = context.run(timeout=60)
    if kind.startswith("pause"):
        assert result.status == "paused", (run_id, result.status, result.error)
        if kind == "pause_abort":
            context.abort("soak")
            return str(context.status)
        resumed = factory.resume(run_id, patch={"resumed": True})
        result = resumed.run(timeout=60)
    if kind == "manual_retry":
        assert result.status == "failed", (run_id, result.status)
        result = registry.retry(run_id).wait(60)
    return str(result.status)


def warm_pool() -> None:
    """Grow the shared step pool to its bound, so the thread baseline includes it."""
    workers = shared_workers()
    barrier = threading.Barrier(workers.max_threads + 1)
    for _ in range(workers.max_threads):
        workers.submit(lambda: barrier.wait(30))
    barrier.wait(30)


def settled_thread_count(baseline: int, patience: float = 10.0) -> int:
    """The thread count once threads on their way out (a step thread retiring after its
    abandoned step returned) have exited; polls every 10 ms for at most `patience` s."""
    deadline = time.monotonic() + patience
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def run_soak(runs: int, concurrency: int, db: Path, seed: int = 1) -> dict[str, Any]:
    """Soak one Registry with `runs` runs; return the report (raises on a broken check)."""
    kinds = draw_kinds(runs, seed)
    store = SqliteStore(db, synchronous="NORMAL")
    report: dict[str, Any] = {"runs": runs, "concurrency": concurrency, "seed": seed}
    try:
        warm_pool()
        gc.collect()
        threads_before = threading.active_count()
        rss_before = rss_bytes()
        started = time.monotonic()
        outcomes, rss_half, stats = drive_all(store, kinds, concurrency)
        elapsed = time.monotonic() - started
        gc.collect()
        threads_after = settled_thread_count(threads_before)
        rss_after = rss_bytes()
        wrong = [(r, k, s) for r, k, s in outcomes if s != SCENARIOS[k][1]]
        checked = check_outcomes(store, outcomes)
        report.update(
            seconds=round(elapsed, 2),
            runs_per_second=round(runs / elapsed, 1),
            scenarios=dict(Counter(kinds)),
            final=dict(checked),
            wrong=wrong[:5],
            threads_before=threads_before,
            threads_after=threads_after,
            rss_before_mb=megabytes(rss_before),
            rss_after_mb=megabytes(rss_after),
            rss_growth_mb=megabytes(rss_after - rss_before),
            rss_second_half_growth_mb=megabytes(rss_after - rss_half),
            registry=stats,
        )
        return report
    finally:
        store.close()


def draw_kinds(runs: int, seed: int) -> list[str]:
    """The scenario of each run, drawn by weight from a generator seeded with `seed`."""
    rng = random.Random(seed)
    names = list(SCENARIOS)
    weights = [SCENARIOS[n][0] for n in names]
    return rng.choices(names, weights, k=runs)


Outcome = tuple[str, str, str]  # run id, scenario, final status


def drive_all(
    store: Any, kinds: list[str], concurrency: int
) -> tuple[list[Outcome], int, dict[str, Any]]:
    """Drive every scenario through one Registry, `concurrency` at a time: the outcomes,
    the RSS half way (the second half's growth shows a leak's slope), the registry's stats."""
    soak = Soak()
    policy = RetryPolicy(max_restarts=2, backoff=0.001, retry_on=(Transient,))
    with Registry(supervision=policy, default_pause_timeout=3600.0) as registry:
        factory = make_factory(soak, store, registry)

        def one(i: int) -> Outcome:
            kind = kinds[i]
            return f"soak-{i:06d}-{kind}", kind, drive(soak, factory, registry, kind, i)

        half = len(kinds) // 2
        with concurrent.futures.ThreadPoolExecutor(concurrency, "soak-driver") as pool:
            outcomes = list(pool.map(one, range(half)))
            gc.collect()
            rss_half = rss_bytes()
            outcomes += pool.map(one, range(half, len(kinds)))
        return outcomes, rss_half, registry.stats()


def check_outcomes(store: Any, outcomes: list[Outcome]) -> Counter[str]:
    """Every run's journal checked against its state, and its status against its
    scenario's; how many runs ended in each status."""
    expected = {run_id: SCENARIOS[kind][1] for run_id, kind, _ in outcomes}
    checked: Counter[str] = Counter()
    for run_id, status in expected.items():
        summary = check_run(
            store, run_id, initial={"kind": run_id.split("-", 2)[2]}, ignore=("resumed",)
        )
        assert summary.status == status, (run_id, summary.status, status)
        checked[summary.status] += 1
    return checked


def megabytes(size: float) -> float:
    return round(size / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temp one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "soak.db"
        report = run_soak(args.runs, args.concurrency, db, args.seed)
    ok = not report["wrong"] and report["threads_after"] <= report["threads_before"]
    print(json.dumps({**report, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
