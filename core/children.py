"""Child pipelines: where each child of a run stands, and what their endings mean.

A stage with `pipelines=` runs each child pipeline as a child of the same run. The run's
state keeps every child's position under `PIPELINE_DATA_KEY` ("children"), keyed by the
child's path key, and every child stage commit updates it in the same transaction as the
stage's patch. So a resume, retry or recovery that re-enters the parent stage skips the
children that succeeded and continues the others where they stand: a committed child stage
never runs again.

Path keys join pipeline and stage ids from the root down: the root is "checkout", its child
"billing" under stage "fanout" is "checkout/fanout/billing", and a grandchild adds
"/<stage>/<pipeline>" again. The key is also the child's artifact namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .definition import Pause, Pipeline, Stage
from .errors import CheckpointMismatch, StageError, error_to_record
from .patch import PIPELINE_DATA_KEY, State
from .results import ChildResult

CHILDREN: Final = "children"

RUNNING: Final = "running"
PAUSED: Final = "paused"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"


def child_key(parent_key: str, stage_id: str, child_id: str) -> str:
    """The path key of child `child_id` of stage `stage_id` of the pipeline at `parent_key`."""
    return f"{parent_key}/{stage_id}/{child_id}"


@dataclass(frozen=True, slots=True)
class Position:
    """Where one child pipeline stands: its next (or failed, or resume) stage and status."""

    status: str
    stage: str | None = None
    stage_runs: int = 0
    pause_timeout: float | None = None
    persist: bool = False
    error: dict[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"status": self.status, "stage": self.stage}
        record["stage_runs"] = self.stage_runs
        if self.status == PAUSED:
            record["pause_timeout"] = self.pause_timeout
            record["persist"] = self.persist
        if self.error is not None:
            record["error"] = self.error
        return record

    @staticmethod
    def from_record(record: Any) -> Position | None:
        """The position stored in `record`, or None when it is not a position."""
        if type(record) is not dict or not isinstance(record.get("status"), str):
            return None
        stage = record.get("stage")
        runs = record.get("stage_runs", 0)
        timeout = record.get("pause_timeout")
        error = record.get("error")
        return Position(
            status=record["status"],
            stage=stage if isinstance(stage, str) else None,
            stage_runs=runs if type(runs) is int else 0,
            pause_timeout=float(timeout) if isinstance(timeout, int | float) else None,
            persist=record.get("persist") is True,
            error=error if type(error) is dict else None,
        )


def positions(state: Mapping[str, Any]) -> dict[str, Any]:
    """The stored child positions of a run's state (by path key)."""
    data = state.get(PIPELINE_DATA_KEY)
    if type(data) is not dict:
        return {}
    found = data.get(CHILDREN)
    return found if type(found) is dict else {}


def position_of(state: Mapping[str, Any], key: str) -> Position | None:
    return Position.from_record(positions(state).get(key))


def with_position(state: Mapping[str, Any], key: str, position: Position) -> State:
    """`state` with the child at `key` recorded at `position` (inputs are not modified)."""
    children = dict(positions(state))
    children[key] = position.to_record()
    return _with_children(state, children)


def without_children_of(state: Mapping[str, Any], parent_key: str, stage_id: str) -> State:
    """`state` without the positions of the children (and their descendants) of a stage."""
    prefix = f"{parent_key}/{stage_id}/"
    children = positions(state)
    if not any(key.startswith(prefix) for key in children):
        return dict(state)
    kept = {key: value for key, value in children.items() if not key.startswith(prefix)}
    return _with_children(state, kept)


def _with_children(state: Mapping[str, Any], children: dict[str, Any]) -> State:
    result = dict(state)
    data = result.get(PIPELINE_DATA_KEY)
    data = dict(data) if type(data) is dict else {}
    if children:
        data[CHILDREN] = children
    else:
        data.pop(CHILDREN, None)
    if data:
        result[PIPELINE_DATA_KEY] = data
    else:
        result.pop(PIPELINE_DATA_KEY, None)
    return result


def entry_of(child: Pipeline, position: Position | None, key: str) -> str | None:
    """Where a child starts when its parent stage (re)starts; None: it already succeeded."""
    if position is None:
        return str(child.first_stage.id)
    if position.status == SUCCEEDED:
        return None
    if position.stage is None or not child.has_stage(position.stage):
        raise CheckpointMismatch(
            f"child pipeline {key!r} stands at stage {position.stage!r}, which "
            f"{child.id!r} v{child.version} does not have; known stages: "
            f"{', '.join(child.stage_ids)}"
        )
    return position.stage


def outcome_of(results: Mapping[str, ChildResult]) -> str:
    """How a stage whose children all ended goes on: FAILED, PAUSED or SUCCEEDED."""
    statuses = {result.status for result in results.values()}
    if FAILED in statuses:
        return FAILED
    if PAUSED in statuses:
        return PAUSED
    return SUCCEEDED


def children_failure(stage: Stage, results: Mapping[str, ChildResult]) -> StageError:
    """The error of a stage whose children failed (each child's own error is quoted)."""
    failed = [(child_id, r.error) for child_id, r in results.items() if r.status == FAILED]
    summary = "; ".join(f"{child_id}: {error}" for child_id, error in failed)
    return StageError(
        f"{len(failed)} child pipeline(s) failed in {stage.label}:{stage.id}: {summary}",
        stage_id=stage.id,
        kind="children",
    )


def children_pause(stage: Stage, paused: list[Position]) -> Pause:
    """The pause of a stage whose children paused: resume re-enters the stage.

    Its timeout is the shortest of the children's (None: the registry's default); it
    persists the artifacts if any child asked to.
    """
    timeouts = [p.pause_timeout for p in paused if p.pause_timeout is not None]
    return Pause(
        stage.id,
        timeout=min(timeouts) if timeouts else None,
        persist=any(p.persist for p in paused),
    )


def results_record(results: Mapping[str, ChildResult]) -> dict[str, Any]:
    """Child results as events and the journal carry them."""
    return {
        child_id: {
            "status": result.status,
            "error": None if result.error is None else error_to_record(result.error),
        }
        for child_id, result in results.items()
    }
