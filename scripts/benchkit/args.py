"""The command line of bench.py: its flags, and the checks on them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .cases import CASES
from .probe import PROBE_FLAG

ALIASES = {"durable_postgres_stage_commit": "durable_step_postgres"}  # its former name


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags; a wrong one exits with status 2 and argparse's usage line."""
    parser = build_parser([case.name for case in CASES])
    args = parser.parse_args(argv)
    problem = args_problem(args)
    if problem is not None:
        parser.error(problem)
    return args


def build_parser(names: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark stageline against LangGraph on the same work.",
        epilog="cases: " + ", ".join(names),
    )
    parser.add_argument("--quick", action="store_true", help="less work and 3 repetitions")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument(
        "--reps",
        type=int,
        help="repetitions per case (default 5, quick 3), and per small sweep point (default 3)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write records as JSON")
    parser.add_argument("--tmpdir", help="where SQLite files go (default: the system temp)")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also run the scaling sweeps (stages per run, concurrent runs: 10 to 10,000, "
        "1,000 with --quick), print them and plot them into FILE.png (needs matplotlib)",
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="with --plot: run the sweeps, not the cases"
    )
    parser.add_argument(
        "--durable-sweep",
        type=Path,
        metavar="FILE.png",
        help="instead of the cases: durable throughput on SQLite against runs in flight "
        "(1 to 1,000; 1 to 100 with --quick) for stageline, LangGraph and DBOS, printed and "
        "plotted into FILE.png (needs matplotlib; about 3 minutes)",
    )
    parser.add_argument(PROBE_FLAG, type=int, metavar="N", help=argparse.SUPPRESS)
    add_instead_flags(parser)
    return parser


def add_instead_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that run other figures instead of the cases."""
    parser.add_argument(
        "--time",
        action="store_true",
        help="instead of the cases: the durable-time figures (wake-up latency, daemon start "
        "with 10,000 sleeping runs), stageline alone; `--time --help` lists their flags",
    )
    parser.add_argument(
        "--admission",
        action="store_true",
        help="instead of the cases: what admission costs (a start with a limit, stage "
        "commits with 5,000 runs queued), stageline alone; `--admission --help` lists flags",
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="instead of the cases: the console's figures (a page of 100,000 runs, event "
        "stream latency), stageline alone; `--console --help` lists their flags",
    )


def args_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, or None; `args.cases` becomes a list of names."""
    if args.cases:
        names = (name.strip() for name in args.cases.split(","))
        args.cases = [ALIASES.get(name, name) for name in names if name]
        problem = unknown_cases(args.cases)
        if problem is not None:
            return problem
    if args.reps is not None and args.reps < 1:
        return "--reps must be at least 1"
    if args.plot_only and args.plot is None:
        return "--plot-only needs --plot FILE.png"
    if args.plot_only and args.cases:
        return "--plot-only runs no case: drop --cases or --plot-only"
    if args.plot is not None and not args.plot.parent.is_dir():
        return f"--plot: no directory {args.plot.parent}"
    if args.durable_sweep is not None and not args.durable_sweep.parent.is_dir():
        return f"--durable-sweep: no directory {args.durable_sweep.parent}"
    return None


def unknown_cases(selected: Sequence[str]) -> str | None:
    names = [case.name for case in CASES]
    unknown = [name for name in selected if name not in names]
    if not unknown:
        return None
    return f"unknown case(s) {', '.join(unknown)}; known: {', '.join(names)}"
