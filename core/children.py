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
from .lifecycle import FAILED, PAUSED, RUNNING, SUCCEEDED
from .patch import PIPELINE_DATA_KEY, State
from .results import ChildResult
from .routing import Decision, route

CHILDREN: Final = "children"


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


def settled(position: Position | None) -> ChildResult | None:
    """The result of a child that does not run when its parent stage is entered again.

    A child that succeeded is done. A child still paused stays paused (so the stage
    pauses again once its siblings end): only a resume releases it (`release_paused`);
    a retry or a recovery of the run does not.
    """
    if position is not None and position.status in (SUCCEEDED, PAUSED):
        return ChildResult(position.status)
    return None


def entry_of(child: Pipeline, position: Position | None, key: str) -> str:
    """Where a child that is not settled starts when its parent stage (re)starts."""
    if position is None:
        return str(child.first_stage.id)
    if position.stage is None or not child.has_stage(position.stage):
        raise CheckpointMismatch(
            f"child pipeline {key!r} stands at stage {position.stage!r}, which "
            f"{child.id!r} v{child.version} does not have; known stages: "
            f"{', '.join(child.stage_ids)}"
        )
    return position.stage


def release_paused(state: Mapping[str, Any]) -> State:
    """`state` with every paused child released to run on at its resume stage.

    Applied by a resume's claim, in the same compare-and-set: from then on those children
    are running, even if this process dies before they commit anything.
    """
    children = positions(state)
    paused = [key for key, record in children.items() if _status_of(record) == PAUSED]
    if not paused:
        return dict(state)
    released = dict(children)
    for key in paused:
        position = Position.from_record(children[key])
        assert position is not None
        released[key] = Position(RUNNING, position.stage, position.stage_runs).to_record()
    return _with_children(state, released)


def _status_of(record: Any) -> Any:
    return record.get("status") if type(record) is dict else None


def check_positions(pipeline: Pipeline, children: Mapping[str, Any], run_id: str) -> None:
    """Raise CheckpointMismatch unless every stored child position fits `pipeline`'s tree."""
    for key, record in children.items():
        child = _child_at(pipeline, key) if isinstance(key, str) else None
        position = Position.from_record(record)
        if child is None or position is None:
            raise CheckpointMismatch(
                f"run {run_id!r} has a child pipeline at {key!r}, which pipeline "
                f"{pipeline.id!r} v{pipeline.version} does not have (or its record is "
                "damaged); resume it with the definition it paused under"
            )
        if position.status != SUCCEEDED:
            entry_of(child, position, key)


def _child_at(pipeline: Pipeline, key: str) -> Pipeline | None:
    """The child pipeline of `pipeline`'s tree whose path key is `key`, if any."""
    stack = [(pipeline.id, pipeline)]
    while stack:
        parent_key, parent = stack.pop()
        for stage in parent.stages:
            for child in stage.pipelines:
                child_path = child_key(parent_key, stage.id, child.id)
                if child_path == key:
                    return child
                if key.startswith(child_path + "/"):
                    stack.append((child_path, child))
    return None


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


def decide_children(
    pipeline: Pipeline,
    key: str,
    stage: Stage,
    state: dict[str, Any],
    results: dict[str, ChildResult],
) -> Decision:
    """How a stage whose children all ended goes on (`key`: the path key of `pipeline`).

    Paused children pause the stage; failed ones fail it (StageError) unless the router
    answers.
    """
    outcome = outcome_of(results)
    if outcome == PAUSED:
        paused = [
            position_of(state, child_key(key, stage.id, child_id))
            for child_id, result in results.items()
            if result.status == PAUSED
        ]
        pause = children_pause(stage, [p for p in paused if p is not None])
        return Decision("pause", stage.id, pause)
    answered, decision = route(pipeline, stage, state, results)
    if outcome == FAILED and not answered:
        raise children_failure(stage, results)
    return decision
