"""The command line of bench.py: its flags, and the checks on them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .cases import CASES
from .probe import PROBE_FLAG


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
    parser.add_argument(PROBE_FLAG, type=int, metavar="N", help=argparse.SUPPRESS)
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
    return parser


def args_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, or None; `args.cases` becomes a list of names."""
    if args.cases:
        args.cases = [name.strip() for name in args.cases.split(",") if name.strip()]
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
    return None


def unknown_cases(selected: Sequence[str]) -> str | None:
    names = [case.name for case in CASES]
    unknown = [name for name in selected if name not in names]
    if not unknown:
        return None
    return f"unknown case(s) {', '.join(unknown)}; known: {', '.join(names)}"
