"""Side-by-side benchmark: stageline against LangGraph and DBOS, on the same work, in one
process.

    python scripts/bench.py [--quick] [--cases NAME[,NAME...]] [--reps N] [--json FILE]
                            [--plot FILE.png [--plot-only]]
    python scripts/bench.py --durable-sweep FILE.png [--quick]
    python scripts/bench.py --time [--runs N] [--reps N] [--stores sqlite,postgres] ...

Every case has one small function per library that builds what it needs (untimed), times
the work with `time.perf_counter` and returns one sample. Each side is warmed up once,
then the sides are sampled alternately and the table shows the median sample: every
library's absolute figure, the store's floor where there is one (bare commits of the
same rows with plain sqlite3 / psycopg, no runtime: benchkit/floor.py), and two ratios,
stageline / LangGraph and stageline / DBOS: lower is better for stageline. Throughput rows
are also printed in runs per second. Two cases run child processes:
`cold_resume_fresh_process` times whole fresh interpreters (one per sample), and
`live_paused_runs_memory` measures one child (`--probe-paused-memory N`, once).

Units: microseconds, except `checkpoint_bytes_per_stage` whose numbers are bytes written
per stage, and `live_paused_runs_memory` whose numbers are bytes of RSS per paused run and
a count of threads (the JSON keys keep their `_us` names for every case). Rows marked in
parentheses are information rows: a variant of the case above. A `-` is a figure that
does not exist: DBOS has no in-memory mode (its system database is always SQLite or
PostgreSQL), so the in-memory cases have no DBOS figure, nor do the byte counts, the
resume from SQLite with a new graph/factory, the cold resume and the memory probe (see
docs/benchmarks.md). The PostgreSQL cases run against $STAGELINE_BENCH_PG_DSN (default
postgresql://postgres@127.0.0.1:5432/test), each library in a scratch schema, and are
skipped, with a note, when that server does not answer. Some cases have a target,
printed met or MISSED under the table; a missed target does not change the exit code.

LangGraph is used the idiomatic way (`StateGraph`, `compile(checkpointer=...)`,
`invoke(input, {"configurable": {"thread_id": ...}})`) in its leanest setup:
`durability="exit"` in memory, `durability="sync"` (stageline's guarantee: a step is
committed before the next starts) on SQLite and PostgreSQL; information rows show its
default ("async"). DBOS is used the idiomatic way too (benchkit/dbos_peer.py): a
`@DBOS.workflow()` of `@DBOS.step()`s, `DBOS.recv`/`DBOS.send`, its SQLite system database
set to WAL + synchronous=FULL like SqliteStore.

`--plot FILE.png` also runs two in-memory scaling sweeps (see "sweeps" below), prints
their numbers as a second table and draws them into FILE.png; `--plot-only` skips the
cases. The full sweeps take about 4 minutes, and LangGraph's 10,000-node run holds about
7 GB of checkpoints in its InMemorySaver; `--quick` stops both sweeps at 1,000.
`--durable-sweep FILE.png` runs, instead of the cases, durable throughput on SQLite
against runs in flight (1 to 1,000) for the three libraries, and plots it (about 3
minutes; `--quick`: 1 to 100). Both plots need matplotlib (in the bench extra).

`--time` runs only the durable-time figures instead (stageline alone, absolute figures
beside their targets, no LangGraph needed): wake-up latency of a sleeping run with 10,000
others sleeping, and the start of a daemon with 10,000 sleeping runs, on SQLite and
PostgreSQL; see benchkit/time_cases.py for its own flags. `--admission` runs only the
admission figures (a start with a limit against one without; stage commits of a running
run with 5,000 runs queued on its limit): see benchkit/admission_cases.py. `--console`
runs only the console's figures (a page of runs over 100,000, event stream latency with
100 streams open): see benchkit/console_cases.py.

Needs the `bench` extra: pip install -e '.[bench]'

This script is the command; its parts are in scripts/benchkit/, one job a module (see
benchkit/__init__.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # imported by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import admission_cases, console_cases, peers, time_cases
from benchkit.args import parse_args
from benchkit.cases import CASES
from benchkit.durable_sweep import DurablePoint, format_durable_sweep, run_durable_sweep
from benchkit.plot import (
    durable_title,
    load_pyplot,
    plot_durable_sweep,
    plot_sweeps,
    sweep_title,
)
from benchkit.probe import paused_memory_probe
from benchkit.report import environment, format_sweeps, format_table
from benchkit.runner import Row, timed_case
from benchkit.settings import FULL, QUICK, Settings
from benchkit.sweeps import SWEEP_REPS, SWEEPS, SweepPoint, run_sweep, sweep_sizes
from benchkit.timing import BenchError

__all__ = [  # what tests/test_bench_smoke.py reaches through this script
    "QUICK",
    "SWEEPS",
    "DurablePoint",
    "SweepPoint",
    "durable_title",
    "format_durable_sweep",
    "format_sweeps",
    "load_pyplot",
    "main",
    "plot_durable_sweep",
    "plot_sweeps",
    "run_sweep",
    "sweep_sizes",
    "sweep_title",
]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if time_cases.FLAG in argv:  # the durable-time figures: opt-in, stageline only
        argv.remove(time_cases.FLAG)
        return time_cases.main(argv)
    if admission_cases.FLAG in argv:  # the admission figures: opt-in, stageline only
        argv.remove(admission_cases.FLAG)
        return admission_cases.main(argv)
    if console_cases.FLAG in argv:  # the console's figures: opt-in, stageline only
        argv.remove(console_cases.FLAG)
        return console_cases.main(argv)
    args = parse_args(argv)
    if args.probe_paused_memory is not None:  # the child process of live_paused_runs_memory
        print(json.dumps(paused_memory_probe(args.probe_paused_memory)))
        return 0
    if not peers.INSTALLED:
        print(
            "LangGraph is not installed; install the bench extra: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    plt = None
    if args.plot is not None or args.durable_sweep is not None:
        plt = load_pyplot()  # imported only now, and before minutes of work
        if plt is None:
            print("--plot needs matplotlib: pip install matplotlib", file=sys.stderr)
            return 2
    settings = settings_for(args)
    if args.durable_sweep is not None:
        return run_durable(plt, args.durable_sweep, settings, args.quick)
    if not args.plot_only and run_cases(args, settings) != 0:
        return 1
    if args.plot is not None:
        if not args.plot_only:
            print()
        return run_sweeps(plt, args.plot, settings, args.quick, args.reps or SWEEP_REPS)
    return 0


def settings_for(args: Namespace) -> Settings:
    """QUICK or FULL, with the --reps and --tmpdir given."""
    settings = QUICK if args.quick else FULL
    if args.reps is not None:
        settings = Settings(**{**settings.__dict__, "reps": args.reps})
    if args.tmpdir:
        settings = Settings(**{**settings.__dict__, "tmpdir": args.tmpdir})
    return settings


def run_cases(args: Namespace, settings: Settings) -> int:
    """Run the selected cases and print their table (and write --json); 1 if one failed."""
    print(environment(settings, args.quick), flush=True)
    rows: list[Row] = []
    for case in CASES:
        if args.cases and case.name not in args.cases:
            continue
        found = timed_case(case, settings)
        if found is None:
            return 1
        rows += found
    print(format_table(rows), flush=True)
    if hasattr(os, "getloadavg"):  # LangGraph's figures move with the machine's load
        print(f"load at the end: {os.getloadavg()[0]:.2f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([row.record() for row in rows], indent=2) + "\n")
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


def run_durable(plt: Any, path: Path, settings: Settings, quick: bool) -> int:
    title = durable_title(quick)
    print(f"durable sweep: {title.replace(chr(10), '; ')}", flush=True)
    started = time.perf_counter()
    try:
        points = run_durable_sweep(settings, quick)
    except BenchError as exc:
        print(f"durable sweep: {exc}", file=sys.stderr)
        return 1
    print(format_durable_sweep(points))
    print(f"durable sweep took {time.perf_counter() - started:.0f}s", file=sys.stderr)
    plot_durable_sweep(plt, points, path, title)
    print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
