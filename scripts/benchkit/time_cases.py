"""`bench.py --time`: durable time (spec section 15), stageline only, in absolute figures.

    python scripts/bench.py --time [--runs N] [--reps N] [--start-reps N]
                                   [--stores sqlite,postgres] [--json FILE] [--tmpdir DIR]

No peer does this, so there is no ratio: each figure is printed beside its target.

- wake-up latency: N runs (default 10,000) sleep an hour in the store, written straight to
  it; a Registry on the system clock recovers them (one timer each), then one run at a time
  sleeps 0.2 s through it. Its latency is from its `wake_at` to its wake commit (the `ts`
  of its second `pipeline:start` event). Median and p95 of `--reps` runs (default 20).
  Target: under 5 ms.
- daemon start: `stageline serve APP --store URL` with those N runs sleeping, from the
  process's start to its `daemon:ready` log line (after its recovery pass has listed them);
  beside it the same on an empty store. Median of `--start-reps` (default 3). Target: under
  2 s. `Registry.recover(factory)` is timed in-process too: until it returns, and until the
  registry holds a timer for every run.

PostgreSQL is the server of $STAGELINE_BENCH_PG_DSN (a schema of its own, dropped after);
skipped, with a note, when it does not answer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stageline import Pipeline, PipelineFactory, Registry, Sleep, Stage, Step
from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.store import RunRecord
from stageline.testing import wait_for_status

from .pg import PG_DSN, pg_unavailable
from .timing import BenchError, check

FLAG = "--time"
PIPELINE_ID = "sleepers"
NAP = 0.2  # seconds the measured run sleeps
FAR = 3600.0  # seconds the other runs sleep: none wakes during the bench
LATENCY_TARGET_MS = 5.0
START_TARGET_S = 2.0
ROOT = Path(__file__).resolve().parent.parent.parent

APP = """
from stageline import Pipeline, Sleep, Stage, Step

app = [Pipeline("sleepers", [
    Stage("nap", 1, router=lambda state, results: Sleep("wake", seconds=state["d"])),
    Stage("wake", 2, steps=[Step("woke", lambda state, ctx: {"woke": True})]),
])]
"""


def sleepers() -> Pipeline:
    """The pipeline of APP: sleep state["d"] seconds, then one step."""
    return Pipeline(PIPELINE_ID, [
        Stage("nap", 1, router=lambda state, results: Sleep("wake", seconds=state["d"])),
        Stage("wake", 2, steps=[Step("woke", lambda state, ctx: {"woke": True})]),
    ])  # fmt: skip


@dataclass(frozen=True)
class Figure:
    """One measured figure, in its unit, with its target (None: information only)."""

    store: str
    what: str
    value: float
    unit: str  # "ms" or "s"
    target: float | None = None

    def line(self) -> list[str]:
        verdict = "" if self.target is None else ("met" if self.value < self.target else "MISSED")
        limit = "-" if self.target is None else f"< {self.target:g} {self.unit}"
        return [self.what, self.store, f"{self.value:,.3f} {self.unit}", limit, verdict]

    def record(self) -> dict[str, Any]:
        return {"store": self.store, "what": self.what, "value": round(self.value, 6),
                "unit": self.unit, "target": self.target}  # fmt: skip


# --- the stores -----------------------------------------------------------------------------


@dataclass
class Place:
    """A store to measure on: its URL (for the daemon) and how to open it here."""

    name: str
    url: str
    open: Callable[..., Any]


@contextmanager
def sqlite_place(tmp: Path, label: str = "runs") -> Iterator[Place]:
    from stageline.stores import SqliteStore

    db = tmp / f"{label}.db"
    yield Place("sqlite", f"sqlite:///{db}", lambda **kw: SqliteStore(db, **kw))


@contextmanager
def postgres_place(tmp: Path, label: str = "runs") -> Iterator[Place]:
    import psycopg

    from stageline.stores import PostgresStore

    schema = f"stageline_bench_time_{uuid.uuid4().hex[:10]}"
    url = f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={schema}"
    try:
        yield Place("postgres", url, lambda **kw: PostgresStore(PG_DSN, schema=schema))
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    psycopg.sql.Identifier(schema)
                )
            )


PLACES = {"sqlite": sqlite_place, "postgres": postgres_place}


def fill(place: Place, count: int, seconds: float = FAR) -> None:
    """`count` runs sleeping `seconds` from now, written straight to the store (fast)."""
    pipeline = sleepers()
    stage, answer = pipeline.stage("nap"), Sleep("wake", seconds=seconds)
    store = place.open(synchronous="OFF")  # SQLite: no fsync while filling; PostgreSQL: as is
    try:
        now = time.time()
        for i in range(count):
            record = RunRecord(f"sleeper-{i:06d}", PIPELINE_ID, 1, lifecycle.RUNNING,
                               {"d": seconds}, "nap", created_at=now, updated_at=now)  # fmt: skip
            store.create_run(record)
            store.commit(tr.sleep(record, now, tr.Progress(0, 1), pipeline=pipeline,
                                  stage=stage, answer=answer, state=record.state))  # fmt: skip
    finally:
        store.close()


# --- (a) wake-up latency --------------------------------------------------------------------


def wake_latencies(place: Place, count: int, reps: int) -> list[float]:
    """Seconds from wake_at to the wake commit of `reps` runs sleeping NAP seconds each
    through a Registry that holds a timer for each of `count` other sleeping runs."""
    store = place.open()
    try:
        with Registry() as registry:
            factory = PipelineFactory(sleepers(), store=store, registry=registry)
            registry.recover(factory)
            wait_armed(registry, count)
            return [one_latency(factory, store) for _ in range(reps)]
    finally:
        store.close()


def one_latency(factory: PipelineFactory, store: Any) -> float:
    run = factory.prepare(state={"d": NAP})
    check(run.run(timeout=30).status == "sleeping", "the measured run did not sleep")
    wait_for_status(store, run.run_id, "succeeded", timeout=30)
    events = store.read_events(run.run_id)  # its wake_at as committed, kept in the journal
    [slept] = [e.wake_at for e in events if e.name == "pipeline:sleeping"]
    wake_at = datetime.datetime.fromisoformat(slept).timestamp()
    starts = [e.ts for e in events if e.name == "pipeline:start"]
    check(len(starts) == 2, f"run {run.run_id} started {len(starts)} times, not twice")
    check(starts[1] >= wake_at, f"run {run.run_id} woke early")
    return starts[1] - wake_at


def wait_armed(registry: Registry, count: int, timeout: float = 120.0) -> None:
    """Until the registry holds a wake timer for `count` runs (or more)."""
    deadline = time.monotonic() + timeout
    while registry.stats()["wake_timers"] < count:
        check(time.monotonic() < deadline, f"fewer than {count} wake timers armed")
        time.sleep(0.005)


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# --- (b) starting with many sleeping runs ---------------------------------------------------


def recover_times(place: Place, count: int) -> tuple[float, float]:
    """Seconds for `Registry.recover(factory)` to return, and until every timer is armed."""
    store = place.open()
    try:
        with Registry() as registry:
            factory = PipelineFactory(sleepers(), store=store, registry=registry)
            start = time.perf_counter()
            registry.recover(factory)
            returned = time.perf_counter() - start
            wait_armed(registry, count)
            return returned, time.perf_counter() - start
    finally:
        store.close()


def daemon_start(url: str, app_dir: Path, timeout: float = 60.0) -> float:
    """Seconds from spawning `stageline serve` on `url` to its daemon:ready line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(app_dir), str(ROOT)])}
    command = [sys.executable, "-m", "stageline", "serve", "timebench:app", "--store", url,
               "--log-format", "json"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=app_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"daemon:ready"' in line:
                return time.perf_counter() - start
            check(time.perf_counter() - start < timeout, "the daemon did not get ready")
        raise BenchError(f"the daemon exited before ready: {proc.stderr.read()[-500:]}")
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- one store ------------------------------------------------------------------------------


def measure_place(name: str, args: argparse.Namespace, tmp: Path) -> list[Figure]:
    """Every figure on one store."""
    print(f"  {name}: {args.runs:,} sleeping runs ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with PLACES[name](tmp) as place, PLACES[name](tmp, "empty") as empty:
        fill(place, args.runs)
        fill(empty, 0)
        figures = latency_figures(place, args) + start_figures(place, empty, args, tmp)
    print(f"    done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    return figures


def latency_figures(place: Place, args: argparse.Namespace) -> list[Figure]:
    ms = [1000 * s for s in wake_latencies(place, args.runs, args.reps)]
    others = f"{args.runs:,} others sleeping"
    return [
        Figure(place.name, f"wake-up latency, median of {len(ms)} ({others})",
               statistics.median(ms), "ms", LATENCY_TARGET_MS),
        Figure(place.name, f"wake-up latency, p95 of {len(ms)}", p95(ms), "ms",
               LATENCY_TARGET_MS),
    ]  # fmt: skip


def start_figures(place: Place, empty: Place, args: argparse.Namespace, tmp: Path) -> list[Figure]:
    (tmp / "timebench.py").write_text(APP)
    full = [daemon_start(place.url, tmp) for _ in range(args.start_reps)]
    bare = [daemon_start(empty.url, tmp) for _ in range(args.start_reps)]
    returned, armed = recover_times(place, args.runs)
    n, reps = f"{args.runs:,}", f"median of {args.start_reps}"
    return [
        Figure(place.name, f"daemon start to ready, {n} sleeping ({reps})",
               statistics.median(full), "s", START_TARGET_S),
        Figure(place.name, f"daemon start to ready, empty store ({reps})",
               statistics.median(bare), "s"),
        Figure(place.name, f"Registry.recover(factory) returns, {n} sleeping", returned, "s"),
        Figure(place.name, f"Registry.recover(factory) until {n} timers armed", armed, "s"),
    ]  # fmt: skip


# --- the command ----------------------------------------------------------------------------


def add_place_args(parser: argparse.ArgumentParser, stores: str = "sqlite,postgres") -> None:
    """The flags every absolute-figure mode shares: --stores, --json, --tmpdir."""
    parser.add_argument("--stores", default=stores, help=f"some of {stores} (comma-separated)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--tmpdir", help="where SQLite files go (default: the system temp)")


def parsed_places(
    parser: argparse.ArgumentParser, argv: Sequence[str], places: Sequence[str] = tuple(PLACES)
) -> argparse.Namespace:
    """Parse `argv`; `args.stores` becomes the list of store names (each one of `places`)."""
    args = parser.parse_args(argv)
    args.stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    if not args.stores or set(args.stores) - set(places):
        parser.error(f"--stores: choose among {', '.join(places)}")
    return args


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py --time", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="other sleeping runs")
    parser.add_argument("--reps", type=int, default=20, help="wake-ups measured per store")
    parser.add_argument("--start-reps", type=int, default=3, help="daemon starts per store")
    add_place_args(parser)
    args = parsed_places(parser, argv)
    if args.runs < 0 or args.reps < 1 or args.start_reps < 1:
        parser.error("--runs must be >= 0, --reps and --start-reps >= 1")
    return args


def format_figures(figures: Sequence[Figure], peerless: str) -> str:
    from .report import aligned

    header = ("figure", "store", "value", "target", "")
    out = aligned(header, [f.line() for f in figures])
    out.append(f"Absolute figures (no peer {peerless}): stageline alone, beside its targets.")
    return "\n".join(out)


def run_figures(
    args: argparse.Namespace,
    title: str,
    peerless: str,
    measure: Callable[[str, argparse.Namespace, Path], list[Figure]],
) -> int:
    """Measure `measure(store name, args, tmp)` on each of `args.stores`, print the figures
    (and write them as JSON with `--json`): the `main` of each absolute-figure mode."""
    print(f"{title}, stageline only; {os.cpu_count()} CPUs", flush=True)
    figures: list[Figure] = []
    try:
        with tempfile.TemporaryDirectory(prefix="stageline-bench-", dir=args.tmpdir) as tmp:
            for name in args.stores:
                why_not = pg_unavailable() if name == "postgres" else None
                if why_not is not None:
                    print(f"  {name}: skipped: {why_not}", file=sys.stderr, flush=True)
                    continue
                figures += measure(name, args, Path(tmp))
    except BenchError as exc:
        print(f"{title}: {exc}", file=sys.stderr)
        return 1
    print(format_figures(figures, peerless), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([f.record() for f in figures], indent=2) + "\n")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_figures(parse_args(argv), "durable time", "does durable sleep", measure_place)
