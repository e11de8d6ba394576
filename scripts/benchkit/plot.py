"""The plots: the in-memory sweeps (per-stage cost on log-log axes) and the durable
throughput sweep (runs per second against runs in flight), titled with the setting."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .durable_sweep import LIBRARIES, DurablePoint
from .sweeps import SWEEP_MIN_STAGES, SWEEPS, Sweep, SweepPoint


def load_pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None if matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_sweeps(plt: Any, points: Sequence[SweepPoint], path: Path, title: str) -> None:
    fig, axes = plt.subplots(
        1, len(SWEEPS), figsize=(12, 5.4), sharey=True, constrained_layout=True
    )
    for ax, sweep in zip(axes, SWEEPS, strict=True):
        plot_sweep(ax, sweep, [p for p in points if p.sweep == sweep.name])
    axes[0].set_ylabel("µs per stage (wall time / stages run)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(ax: Any, sweep: Sweep, mine: Sequence[SweepPoint]) -> None:
    """One sweep's subplot: both libraries' points, labelled, on log-log axes."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    sizes = [p.size for p in mine]
    for label, values, marker in (
        ("stageline", [p.stageline for p in mine], "o"),
        ("LangGraph (InMemorySaver)", [p.langgraph for p in mine], "s"),
    ):
        ax.plot(sizes, values, marker=marker, label=label)
        for x, y in zip(sizes, values, strict=True):
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.1, y=0.1)  # room for the labels of the end points
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_title(sweep.title, fontsize=10)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(sweep.x_label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def sweep_title(quick: bool, reps: int) -> str:
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    cpu = cpu_model()
    return (
        f"Cost per stage, in memory: stageline {metadata.version('stageline')} vs LangGraph "
        f"{metadata.version('langgraph')} ({'--quick' if quick else 'full'} sweep)\n"
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs{f' ({cpu})' if cpu else ''}{load} at start; each point: the "
        f"median of {reps} samples, or 1 sample where a sample runs over "
        f"{SWEEP_MIN_STAGES:,} stages"
    )


def plot_durable_sweep(plt: Any, points: Sequence[DurablePoint], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    offsets = ((0, 6), (0, 6), (0, -13))  # labels of close points apart: one per library
    for (name, _), marker, offset in zip(LIBRARIES, "osD", offsets, strict=True):
        mine = sorted((p for p in points if p.library == name), key=lambda p: p.in_flight)
        if not mine:
            continue
        xs, ys = [p.in_flight for p in mine], [p.runs_per_s for p in mine]
        ax.plot(xs, ys, marker=marker, label=name)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    sizes = sorted({p.in_flight for p in points})
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("runs in flight")
    ax.set_ylabel("runs per second (10 durable stages each)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def durable_title(quick: bool) -> str:
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    cpu = cpu_model()
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("stageline", "langgraph", "dbos")
    )
    return (
        f"Durable throughput on SQLite (WAL, synchronous=FULL): {versions} "
        f"({'--quick' if quick else 'full'} sweep)\n"
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs{f' ({cpu})' if cpu else ''}{load} at start; one sample a point"
    )
