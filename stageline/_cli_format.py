"""How the `stageline` commands print runs and events: tables, times, colours and JSON.

Pure text: every function takes a value the store returned and gives back what to print.
`click.style` colours the status words; click drops the colours when the output is not a
terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from stageline import _cli_times as times
from stageline.core import lifecycle

if TYPE_CHECKING:
    from stageline.core.checkpoint import Checkpoint
    from stageline.core.events import Event
    from stageline.core.store import RunInfo

COLOURS = {
    lifecycle.SUCCEEDED: "green",
    lifecycle.FAILED: "red",
    lifecycle.ABORTED: "red",
    lifecycle.QUARANTINED: "red",
    lifecycle.EXPIRED: "yellow",
    lifecycle.PAUSED: "yellow",
    lifecycle.SLEEPING: "yellow",
    lifecycle.RUNNING: "cyan",
    lifecycle.PENDING: "cyan",
    lifecycle.QUEUED: "cyan",
    lifecycle.CORRUPT: "magenta",
}
"""The colour of each status word: green ended well, red ended badly, yellow waits."""

iso = times.iso  # a time for JSON: 2026-12-04T19:55:00.123456Z
human_time = times.human  # a time for people: local, with its zone and "3 min ago"

RUN_HEADERS = ("RUN", "PIPELINE", "STATUS", "STAGE", "CREATED", "DURATION")


def dumps(value: Any, indent: int | None = None) -> str:
    """Strict JSON: a float that is NaN or infinite (a step may store one) is written as
    the string "NaN", "Infinity" or "-Infinity", never as a bare NaN no parser accepts."""
    try:
        return json.dumps(value, indent=indent, default=str, ensure_ascii=False, allow_nan=False)
    except ValueError:  # a non-finite float somewhere
        return json.dumps(finite(value), indent=indent, default=str, ensure_ascii=False)


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by its name, as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def when(info: RunInfo) -> str:
    """When the run last changed, for people (a corrupt row may have no readable time)."""
    return times.human(info.updated_at)


def took(info: RunInfo) -> str:
    """How long the run took, or has taken so far."""
    ended = info.status not in lifecycle.ACTIVE
    return times.run_duration(info.created_at, info.updated_at, ended)


def no_color() -> bool:
    """NO_COLOR set (to anything but empty) turns colours off (https://no-color.org)."""
    return bool(os.environ.get("NO_COLOR"))


def coloured(status: str) -> str:
    """The status word in its colour (click drops colours off a terminal)."""
    return status if no_color() else click.style(status, fg=COLOURS.get(status))


# --- tables and fields ----------------------------------------------------------------------


def run_row(info: RunInfo) -> tuple[str, ...]:
    """One line of the `runs` table (RUN_HEADERS)."""
    created = times.human(info.created_at)
    stage = info.stage or "-"
    if info.status == lifecycle.SLEEPING and info.wake_at is not None:
        stage = f"{stage} (wakes {times.ago(info.wake_at)})"
    return (info.run_id, info.pipeline_id or "-", info.status, stage, created, took(info))


def table(headers: tuple[str, ...], rows: Sequence[Sequence[str]], status_column: int) -> str:
    """A plain table; the status column is coloured (click drops colours off a TTY)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        padding = " " * (widths[status_column] - len(row[status_column]))
        cells[status_column] = coloured(row[status_column]) + padding
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_fields(info: RunInfo) -> list[tuple[str, str]]:
    """The named lines `show` prints above the children, tracebacks and state."""
    fields = [
        ("run", info.run_id),
        ("pipeline", f"{info.pipeline_id} (version {info.pipeline_version})"),
        ("status", coloured(info.status)),
        ("stage", info.stage or "-"),
        ("created", times.human(info.created_at)),
        ("updated", when(info)),
        ("duration", took(info)),
    ]
    if info.status in lifecycle.ACTIVE and info.owner:  # a stopped run has no live owner
        until = info.lease_until
        fields.append(("owner", f"{info.owner} (lease until {times.local(until)}, "
                                f"{times.ago(until)})"))  # fmt: skip
    if info.status == lifecycle.QUEUED:
        fields.append(("priority", f"{info.priority} (waits for a slot: `stageline limits`)"))
    elif info.priority:
        fields.append(("priority", str(info.priority)))
    checkpoint = info.checkpoint
    if checkpoint is not None and info.status != lifecycle.SLEEPING:  # it has "wakes"
        paused = times.human(paused_on(checkpoint))
        fields.append(("resume at", f"{checkpoint.resume_at} (paused {paused})"))
    fields.extend(_wake_fields(info))
    if info.error:
        fields.append(("error", str(info.error.get("message", info.error))))
    return fields


def _wake_fields(info: RunInfo) -> list[tuple[str, str]]:
    """When a sleeping run wakes, or a paused run's deadline runs out (and what then)."""
    if info.wake_at is None:
        return []
    if info.status == lifecycle.SLEEPING:
        return [("wakes", times.human(info.wake_at))]
    on_expiry = getattr(info.checkpoint, "on_expiry", None)
    then = f"then on at {on_expiry}" if on_expiry else "then it ends expired"
    return [("expires", f"{times.human(info.wake_at)}, unless resumed; {then}")]


def children_lines(children: dict[str, Any]) -> list[str]:
    """Where each child pipeline stands (`children.positions`), one line each:
    `  checkout/fanout/billing  paused at ship`."""
    from stageline.core.children import Position

    lines = []
    for key, record in sorted(children.items()):
        position = Position.from_record(record)
        if position is not None:
            at = f" at {position.stage}" if position.stage else ""
            lines.append(f"  {key}  {coloured(position.status)}{at}")
    return lines


def traceback_lines(error: dict[str, Any] | None) -> list[str]:
    """The error's tracebacks: each failed step's (`step X:` before it), else the stage's."""
    if not error:
        return []
    lines: list[str] = []
    for step in error.get("steps") or []:
        if isinstance(step, dict) and step.get("traceback"):
            lines.append(f"step {step.get('step_id')}:")
            lines.extend(str(step["traceback"]).rstrip().splitlines())
    if not lines and error.get("traceback"):
        lines.extend(str(error["traceback"]).rstrip().splitlines())
    return lines


# --- JSON -----------------------------------------------------------------------------------


def run_dict(info: RunInfo, *, full: bool) -> dict[str, Any]:
    """A run as JSON: the `runs` line, or with `full` everything `show` knows."""
    data: dict[str, Any] = {
        "run_id": info.run_id,
        "pipeline_id": info.pipeline_id,
        "pipeline_version": info.pipeline_version,
        "status": info.status,
        "stage": info.stage,
        "created_at": times.iso(info.created_at),
        "updated_at": times.iso(info.updated_at),
    }
    if info.wake_at is not None:  # sleeping, or paused with a deadline
        data["wake_at"] = times.iso(info.wake_at)
    if info.status == lifecycle.CORRUPT:  # what is damaged
        data["error"] = info.error
    if full:
        data["owner"] = info.owner
        data["lease_until"] = times.iso(info.lease_until)
        data["priority"] = info.priority
        data["error"] = info.error
        data["checkpoint"] = checkpoint_dict(info.checkpoint)
        data["state"] = info.state
    return data


def checkpoint_dict(checkpoint: Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    return {
        "resume_at": checkpoint.resume_at,
        "paused_at_stage_id": checkpoint.paused_at_stage_id,
        "paused_on": times.iso(paused_on(checkpoint)) or checkpoint.paused_on,
        "expires_at": checkpoint.expires_at,
        "on_expiry": checkpoint.on_expiry,
    }


def paused_on(checkpoint: Checkpoint) -> dt.datetime | None:
    """When the run paused (None if the checkpoint's time cannot be read)."""
    try:
        moment = checkpoint.paused_on_datetime
    except (TypeError, ValueError):
        return None
    return moment if isinstance(moment, dt.datetime) else None


def event_dict(event: Event) -> dict[str, Any]:
    from stageline.core.events import event_to_record

    record = dict(event_to_record(event))
    record["ts"] = times.iso(event.ts)
    return record


# --- the journal ----------------------------------------------------------------------------


def event_line(event: Event) -> str:
    """One journal event as a line of `logs`: seq, time, name, where, detail."""
    ts = times.local(event.ts, fraction=True)
    return f"{event.seq:>4}  {ts}  {event.name:<17} {where(event):<12} {detail(event)}".rstrip()


def where(event: Event) -> str:
    """The stage; in a child pipeline, "child:stage" (the path below the root)."""
    if len(event.path) > 1:
        return "/".join(f"{node.pipeline_id}:{node.stage_id or ''}" for node in event.path[1:])
    return str(event.stage_id or "-")


def detail(event: Event) -> str:
    if event.error is not None:
        return " ".join(str(event.error).split())
    if event.name == "pipeline:start":
        return f"entry={event.entry}" + (" resumed" if event.resumed else "")
    if event.routing is not None:
        return f"-> {event.routing}"
    if event.resume_at is not None:
        return f"resume at {event.resume_at}"
    if event.pause_timeout is not None:
        return f"pause_timeout={event.pause_timeout}"
    return ""
