"""What the bench prints: the tables of cases and sweeps, their units, and the setting."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING

from .goals import goal_lines
from .settings import Settings

if TYPE_CHECKING:
    from .runner import Row
    from .sweeps import SweepPoint


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value:,.0f} B"
    if unit == "threads":
        return f"{value:,.0f} threads"
    return f"{value:,.1f}"


def aligned(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a plain-text table: the first column left-aligned, the others right."""
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (value.rjust(width) for value, width in zip(values[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    return [line(header), "  ".join("-" * w for w in widths), *(line(c) for c in cells)]


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    header = ("case", "stageline µs", "LangGraph µs", "DBOS µs", "floor µs", "/LG", "/DBOS")
    cells = [
        (
            row.case,
            format_value(row.stageline, row.unit),
            format_value(row.langgraph, row.unit),
            format_value(row.dbos, row.unit),
            format_value(row.floor, row.unit),
            format_ratio(row.ratio),
            format_ratio(row.ratio_dbos),
        )
        for row in rows
    ]
    out = aligned(header, cells)
    out.append(
        "/LG = stageline / LangGraph, /DBOS = stageline / DBOS: lower is better for "
        "stageline; floor = the store's bare commits of the same rows, no runtime; "
        "medians of repetitions; - = no figure (no equivalent, or not measured)."
    )
    out += rates(rows)
    units = {row.unit for row in rows}
    if "bytes" in units:
        out.append(
            "Rows in B are bytes, not µs: written per stage (checkpoint_bytes_per_stage*), "
            "or RSS growth per paused run (live_paused_runs_memory)."
        )
    if "threads" in units:
        out.append("Rows in threads count threads alive after the runs paused, minus before.")
    targets = [line for line in (row.target_line() for row in rows) if line is not None]
    if targets:
        out += ["targets (a missed target does not fail the bench):", *targets]
    out += goal_lines(rows)
    return "\n".join(out)


def rates(rows: Sequence[Row]) -> list[str]:
    """Runs per second of the throughput rows (µs per run), every library and the floor."""
    lines = []
    for row in rows:
        if not row.case.startswith("throughput"):
            continue
        figures = [("stageline", row.stageline), ("LangGraph", row.langgraph)]
        figures += [("DBOS", row.dbos), ("floor", row.floor)]
        shown = [f"{name} {1e6 / us:,.0f}" for name, us in figures if us]
        lines.append(f"  {row.case}: runs/s: {', '.join(shown)}")
    return ["throughput in runs per second (1e6 / µs per run):", *lines] if lines else []


def format_sweeps(points: Sequence[SweepPoint]) -> str:
    header = ("sweep", "N", "samples", "stageline µs/stage", "LangGraph µs/stage", "ratio")
    cells = [
        (
            p.sweep,
            f"{p.size:,}",
            str(p.samples),
            f"{p.stageline:,.1f}",
            f"{p.langgraph:,.1f}",
            f"{p.ratio:.2f}",
        )
        for p in points
    ]
    out = aligned(header, cells)
    out.append(
        "µs per stage = a sample's wall time / (runs x stages); median of the samples; "
        "ratio = stageline / LangGraph."
    )
    return "\n".join(out)


def environment(settings: Settings, quick: bool) -> str:
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (
        f"stageline {metadata.version('stageline')}, langgraph {metadata.version('langgraph')}, "
        f"dbos {dbos_version()}, "
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs{load}; {'--quick' if quick else 'full'} run, "
        f"median of {settings.reps} repetitions"
    )


def dbos_version() -> str:
    try:
        return metadata.version("dbos")
    except metadata.PackageNotFoundError:
        return "not installed"
