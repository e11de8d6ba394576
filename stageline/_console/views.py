"""What the API answers about a run, built from what the store holds (no I/O here).

`run_detail` is `GET /api/runs/{run_id}`: the run as `stageline show --json` prints it,
plus what a page draws: the stage timeline (from the journal's stage events), where each
child pipeline stands, the tracebacks, and what a waiting run waits for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stageline import _cli_format as fmt
from stageline import _cli_times as times
from stageline.core import events as ev
from stageline.core import lifecycle

if TYPE_CHECKING:
    from stageline.core.events import Event
    from stageline.core.store import RunInfo

_OUTCOMES = {
    ev.STAGE_SUCCESS: "succeeded",
    ev.STAGE_FAILURE: "failed",
    ev.STAGE_PAUSED: "paused",
}


def run_summary(info: RunInfo) -> dict[str, Any]:
    """One line of the runs table."""
    return fmt.run_dict(info, full=False)


def run_detail(info: RunInfo, children: dict[str, Any], journal: Sequence[Event]) -> dict[str, Any]:
    """Everything the run page shows."""
    data = fmt.run_dict(info, full=True)
    data["children"] = child_positions(children)
    data["timeline"] = timeline(journal)
    data["tracebacks"] = tracebacks(info.error)
    data["waiting"] = waiting(info)
    return data


def corrupt_detail(run_id: str, why: str) -> dict[str, Any]:
    """A run whose stored row cannot be read: its id, and why."""
    return {
        "run_id": run_id, "pipeline_id": None, "status": lifecycle.CORRUPT, "stage": None,
        "error": {"kind": "corrupt", "message": why}, "state": {}, "checkpoint": None,
        "children": [], "timeline": [], "tracebacks": [], "waiting": None,
    }  # fmt: skip


def child_positions(children: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each child pipeline stands, by its key (`checkout/fanout/billing`)."""
    from stageline.core.children import Position

    found = []
    for key, record in sorted(children.items()):
        position = Position.from_record(record)
        if position is not None:
            found.append({"key": key, "status": position.status, "stage": position.stage})
    return found


def timeline(journal: Sequence[Event]) -> list[dict[str, Any]]:
    """A bar per stage run of the root pipeline, in order: when it started, how it ended.

    A stage that ran before (a retried run, a loop back to it) is marked with its `run`
    count and `retried`; `attempts` is the most attempts any of its steps took (more than
    1: a step was retried); the last bar of a run still in a stage has outcome "running".
    """
    bars: list[dict[str, Any]] = []
    runs: dict[str, int] = {}
    open_bar: dict[str, Any] | None = None
    started = 0.0
    for event in journal:
        if len(event.path) > 1:  # a child pipeline's stage: its parent's bar covers it
            continue
        if event.name == ev.STAGE_START and event.stage_id is not None:
            runs[event.stage_id] = runs.get(event.stage_id, 0) + 1
            open_bar, started = _bar(event, runs[event.stage_id]), event.ts
            bars.append(open_bar)
        elif event.name in _OUTCOMES and open_bar is not None:
            open_bar["ended_at"] = times.iso(event.ts)
            open_bar["duration"] = max(0.0, event.ts - started)
            open_bar["outcome"] = _OUTCOMES[event.name]
            open_bar["attempts"] = event.attempt
            open_bar = None
        elif event.name == ev.PIPELINE_SLEEPING and bars and bars[-1]["outcome"] == "succeeded":
            bars[-1]["outcome"] = "sleeping"
    return bars


def _bar(start: Event, run: int) -> dict[str, Any]:
    return {
        "stage_id": start.stage_id,
        "label": start.label,
        "started_at": times.iso(start.ts),
        "ended_at": None,
        "duration": None,
        "outcome": "running",
        "run": run,
        "retried": run > 1,
        "attempts": None,
    }


def tracebacks(error: dict[str, Any] | None) -> list[dict[str, str]]:
    """Each failed step's traceback (where: "step ID"), else the stage's."""
    if not error:
        return []
    found = [
        {"where": f"step {step.get('step_id')}", "text": str(step["traceback"])}
        for step in error.get("steps") or []
        if isinstance(step, dict) and step.get("traceback")
    ]
    if not found and error.get("traceback"):
        found.append({"where": "stage", "text": str(error["traceback"])})
    return found


def waiting(info: RunInfo) -> dict[str, Any] | None:
    """What a paused, sleeping or queued run waits for, and since when."""
    if info.status == lifecycle.PAUSED and info.checkpoint is not None:
        checkpoint = info.checkpoint
        return {
            "kind": lifecycle.PAUSED,
            "for": f"a resume (it continues at stage {checkpoint.resume_at})",
            "since": times.iso(fmt.paused_on(checkpoint)),
            "until": times.iso(info.wake_at),
            "on_expiry": getattr(checkpoint, "on_expiry", None),
        }
    if info.status == lifecycle.SLEEPING:
        return {
            "kind": lifecycle.SLEEPING,
            "for": f"its wake-up (it continues at stage {info.stage})",
            "since": times.iso(info.updated_at),
            "until": times.iso(info.wake_at),
        }
    if info.status == lifecycle.QUEUED:
        return {
            "kind": lifecycle.QUEUED,
            "for": f"a slot under its pipeline's limits (priority {info.priority})",
            "since": times.iso(info.updated_at),
            "until": None,
        }
    return None
