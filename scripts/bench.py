"""Side-by-side benchmark: stageline against LangGraph, on the same work, in one process.

    python scripts/bench.py [--quick] [--cases NAME[,NAME...]] [--reps N] [--json FILE]
                            [--plot FILE.png [--plot-only]]
    python scripts/bench.py --time [--runs N] [--reps N] [--stores sqlite,postgres] ...

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

`--time` runs only the durable-time figures instead (stageline alone, absolute figures
beside their targets, no LangGraph needed): wake-up latency of a sleeping run with 10,000
others sleeping, and the start of a daemon with 10,000 sleeping runs, on SQLite and
PostgreSQL; see benchkit/time_cases.py for its own flags. `--admission` runs only the
admission figures (a start with a limit against one without; stage commits of a running
run with 5,000 runs queued on its limit): see benchkit/admission_cases.py.

Needs the `bench` extra: pip install -e '.[bench]'

This script is the command; its parts are in scripts/benchkit/, one job a module (see
benchkit/__init__.py).
"""

from __future__ import annotations

import json
import sys
import time
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # imported by path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import admission_cases, peers, time_cases
from benchkit.args import parse_args
from benchkit.cases import CASES
from benchkit.plot import load_pyplot, plot_sweeps, sweep_title
from benchkit.probe import paused_memory_probe
from benchkit.report import environment, format_sweeps, format_table
from benchkit.runner import Row, timed_case
from benchkit.settings import FULL, QUICK, Settings
from benchkit.sweeps import SWEEP_REPS, SWEEPS, SweepPoint, run_sweep, sweep_sizes
from benchkit.timing import BenchError

__all__ = [  # what tests/test_bench_smoke.py reaches through this script
    "QUICK",
    "SWEEPS",
    "SweepPoint",
    "format_sweeps",
    "load_pyplot",
    "main",
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
    if args.plot is not None:
        plt = load_pyplot()  # imported only now, and before minutes of work
        if plt is None:
            print("--plot needs matplotlib: pip install matplotlib", file=sys.stderr)
            return 2
    settings = settings_for(args)
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


if __name__ == "__main__":
    sys.exit(main())
