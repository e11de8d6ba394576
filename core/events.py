"""Event values: what a run tells its subscribers and its journal, in `seq` order."""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Final, NamedTuple

from .errors import error_from_record, error_to_record

PIPELINE_START: Final = "pipeline:start"
PIPELINE_SUCCESS: Final = "pipeline:success"
PIPELINE_PAUSED: Final = "pipeline:paused"
PIPELINE_FAILURE: Final = "pipeline:failure"
PIPELINE_SLEEPING: Final = "pipeline:sleeping"
STAGE_START: Final = "stage:start"
STAGE_SUCCESS: Final = "stage:success"
STAGE_PAUSED: Final = "stage:paused"
STAGE_FAILURE: Final = "stage:failure"
STEP_START: Final = "step:start"
STEP_SUCCESS: Final = "step:success"
STEP_RETRY: Final = "step:retry"
STEP_FAILURE: Final = "step:failure"

EVENT_NAMES: Final = (
    PIPELINE_START, PIPELINE_SUCCESS, PIPELINE_PAUSED, PIPELINE_FAILURE, PIPELINE_SLEEPING,
    STAGE_START, STAGE_SUCCESS, STAGE_PAUSED, STAGE_FAILURE,
    STEP_START, STEP_SUCCESS, STEP_RETRY, STEP_FAILURE,
)  # fmt: skip
TERMINAL_EVENTS: Final = frozenset(
    {PIPELINE_SUCCESS, PIPELINE_PAUSED, PIPELINE_FAILURE, PIPELINE_SLEEPING}
)
"""The events that end a segment of a run (pipeline:sleeping and pipeline:paused end a
segment, not the run)."""


def is_journaled(name: str) -> bool:
    """Stage- and pipeline-level events go to the store's journal; step events do not."""
    return not name.startswith("step:")


class PathNode(NamedTuple):
    """One level of where an event happened: a pipeline, and the stage within it (or None)."""

    pipeline_id: str
    stage_id: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in a run. Fields that do not apply to `name` are None."""

    name: str
    run_id: str
    path: tuple[PathNode, ...]
    seq: int
    ts: float
    pipeline_id: str | None = None
    entry: str | None = None
    resumed: bool | None = None
    state: dict[str, Any] | None = None
    checkpoint: Any = None
    pause_timeout: float | None = None
    error: Any = None
    stage_id: str | None = None
    label: str | None = None
    results: dict[str, Any] | None = None
    routing: str | None = None
    resume_at: str | None = None
    step_id: str | None = None
    attempt: int | None = None
    duration: float | None = None
    wake_at: str | None = None
    """pipeline:sleeping: when the run wakes (ISO-8601 UTC)."""


_FIELD_NAMES: Final = tuple(f.name for f in fields(Event))
_OMIT_FROM_JOURNAL: Final = frozenset({"state", "checkpoint"})


_JOURNALED_FIELDS: Final = tuple(n for n in _FIELD_NAMES if n not in _OMIT_FROM_JOURNAL)
_read_journaled: Final = attrgetter(*_JOURNALED_FIELDS)


def event_to_record(event: Event) -> dict[str, Any]:
    """A compact storable form: set fields only; state and checkpoint live in the run row."""
    record = {
        name: value
        for name, value in zip(_JOURNALED_FIELDS, _read_journaled(event), strict=True)
        if value is not None
    }
    record["path"] = [list(node) for node in event.path]
    error = record.get("error")
    if isinstance(error, BaseException):
        record["error"] = error_to_record(error)
    return record


def event_from_record(record: dict[str, Any]) -> Event:
    """Rebuild an Event read back from a journal (unknown keys are ignored)."""
    values = {k: v for k, v in record.items() if k in _FIELD_NAMES}
    values["path"] = tuple(PathNode(str(p[0]), p[1]) for p in record.get("path", ()))
    if isinstance(values.get("error"), dict):
        values["error"] = error_from_record(values["error"])
    return Event(**values)


def journal_record(event: Event) -> dict[str, Any]:
    """The smallest record that `event_from_journal` can rebuild the event from.

    Leaves out what the journal row already knows (name, run_id, pipeline_id), the path
    when it is just (pipeline, stage) of a root run, and a label equal to the stage id.
    """
    record = event_to_record(event)
    del record["name"], record["run_id"]
    record.pop("pipeline_id", None)
    if event.path == default_path(event):
        del record["path"]
    if record.get("label") is not None and record["label"] == event.stage_id:
        del record["label"]
    return record


def event_from_journal(record: dict[str, Any], name: str, run_id: str, pipeline_id: str) -> Event:
    """Rebuild an event stored with `journal_record`."""
    full = dict(record, name=name, run_id=run_id, pipeline_id=pipeline_id)
    if "path" not in full:
        full["path"] = [[pipeline_id, record.get("stage_id")]]
    elif full["path"]:  # a child pipeline's event: its pipeline is the path's last node
        full["pipeline_id"] = str(full["path"][-1][0])
    if name.startswith("stage:") and "label" not in full:
        full["label"] = record.get("stage_id")
    return event_from_record(full)


def default_path(event: Event) -> tuple[PathNode, ...]:
    return (PathNode(str(event.pipeline_id), event.stage_id),)


def root_event(
    name: str, run_id: str, pipeline_id: str, seq: int, ts: float, **payload: Any
) -> Event:
    """A pipeline-level event of a run's root pipeline (path: the pipeline alone)."""
    path = (PathNode(pipeline_id, None),)
    return Event(name, run_id, path, seq, ts, pipeline_id=pipeline_id, **payload)


def stage_event(
    name: str,
    run_id: str,
    pipeline_id: str,
    prefix: tuple[PathNode, ...],
    stage_id: str,
    seq: int,
    ts: float,
    **payload: Any,
) -> Event:
    """A stage- or step-level event of `pipeline_id`, whose parent stage is at `prefix`
    (empty for the root pipeline)."""
    path = (*prefix, PathNode(pipeline_id, stage_id))
    return Event(name, run_id, path, seq, ts, pipeline_id=pipeline_id, stage_id=stage_id, **payload)
