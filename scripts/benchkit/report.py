"""What the bench prints: the tables of cases and sweeps, their units, and the setting."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING

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


def format_table(rows: Sequence[Row]) -> str:
    header = ("case", "stageline µs", "LangGraph µs", "ratio")
    cells = [
        (
            row.case,
            format_value(row.stageline, row.unit),
            format_value(row.langgraph, row.unit),
            "-" if row.ratio is None else f"{row.ratio:.2f}",
        )
        for row in rows
    ]
    out = aligned(header, cells)
    out.append("ratio = stageline / LangGraph, lower is better; medians of repetitions.")
    units = {row.unit for row in rows}
    if "bytes" in units:
        out.append(
            "Rows in B are bytes, not µs: written per stage (checkpoint_bytes_per_stage*), "
            "or RSS growth per paused run (live_paused_runs_memory)."
        )
    if "threads" in units:
        out.append("Rows in threads count threads alive after the runs paused, minus before.")
    if any(row.langgraph is None for row in rows):
        out.append("Rows with - in the LangGraph column are stageline-only information rows.")
    targets = [line for line in (row.target_line() for row in rows) if line is not None]
    if targets:
        out += ["targets (a missed target does not fail the bench):", *targets]
    return "\n".join(out)


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
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs{load}; {'--quick' if quick else 'full'} run, "
        f"median of {settings.reps} repetitions"
    )
