"""What a router's answer means: advance, jump, terminate, pause, or a routing error."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from .definition import TERMINATE, Pause, Pipeline, Sleep, Stage
from .errors import RoutingError, StageError, describe_error
from .patch import copy_state
from .timing import visible_state


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a run goes after a stage.

    `kind` is "next" (advance by order), "jump", "end" (past the last stage), "terminate",
    "pause" or "sleep"; `next_stage` is the stage to run next (or to resume or wake at).
    """

    kind: str
    next_stage: str | None = None
    pause: Pause | None = None
    sleep: Sleep | None = None

    @property
    def ends_run(self) -> bool:
        return self.kind in ("end", "terminate")

    @property
    def routing(self) -> str:
        """What events report: the next stage id, "end", "terminate", "pause" or "sleep"."""
        if self.kind in ("next", "jump"):
            return str(self.next_stage)
        return self.kind


def decide(pipeline: Pipeline, stage_id: str, answer: Any) -> Decision:
    """Interpret a router's answer for the stage `stage_id` of `pipeline`."""
    if answer is None:
        following = pipeline.next_stage_id(stage_id)
        return Decision("end") if following is None else Decision("next", following)
    if answer is TERMINATE:
        return Decision("terminate")
    if isinstance(answer, Pause):
        _require_stage(pipeline, stage_id, answer.resume_at, "Pause.resume_at")
        if answer.on_expiry is not None:
            _require_stage(pipeline, stage_id, answer.on_expiry, "Pause.on_expiry")
        return Decision("pause", answer.resume_at, answer)
    if isinstance(answer, Sleep):
        _require_stage(pipeline, stage_id, answer.resume_at, "Sleep.resume_at")
        return Decision("sleep", answer.resume_at, sleep=answer)
    if isinstance(answer, str):
        _require_stage(pipeline, stage_id, answer, "jump target")
        return Decision("jump", answer)
    raise RoutingError(
        f"router of stage {stage_id!r} in pipeline {pipeline.id!r} returned "
        f"{type(answer).__name__} {answer!r}; return None, a stage id, TERMINATE, Pause(...) "
        "or Sleep(...)"
    )


def _require_stage(pipeline: Pipeline, stage_id: str, target: str, what: str) -> None:
    if not pipeline.has_stage(target):
        raise RoutingError(
            f"router of stage {stage_id!r} in pipeline {pipeline.id!r} named unknown {what} "
            f"{target!r}; known stages: {', '.join(pipeline.stage_ids)}"
        )


def check_stage_budget(pipeline: Pipeline, stage_runs: int, stage_id: str) -> None:
    """Fail a runaway loop: more than `max_stage_runs` stage executions in one run."""
    if stage_runs > pipeline.max_stage_runs:
        raise RoutingError(
            f"pipeline {pipeline.id!r} ran {stage_runs} stages (at {stage_id!r}), more than "
            f"max_stage_runs={pipeline.max_stage_runs}: a runaway loop? Fix the router or "
            "raise max_stage_runs"
        )


def route(
    pipeline: Pipeline, stage: Stage, state: dict[str, Any], results: dict[str, Any]
) -> tuple[bool, Decision]:
    """Call the stage's router on copies of `state` and `results`; also say whether it
    answered (returned not None). A router that raises fails the stage (StageError)."""
    if stage.router is None:
        return False, decide(pipeline, stage.id, None)
    try:
        answer = stage.router(copy_state(visible_state(state)), copy_state(results))
    except BaseException as exc:
        raise StageError(
            f"router of stage {stage.label}:{stage.id} raised {describe_error(exc)}",
            stage_id=stage.id,
            kind="router",
            traceback="".join(traceback.format_exception(exc)),
        ) from exc
    return answer is not None, decide(pipeline, stage.id, answer)


def check_child_answer(pipeline: Pipeline, stage_id: str, decision: Decision) -> None:
    """Refuse what only a run's top-level pipeline may answer: a child pipeline cannot
    put the whole run to sleep, nor give it an expiry (RoutingError)."""
    pause = decision.pause
    if decision.kind == "sleep" or (pause is not None and pause.expires_in is not None):
        what = "Sleep" if decision.kind == "sleep" else "Pause(expires_in=...)"
        raise RoutingError(
            f"router of stage {stage_id!r} in child pipeline {pipeline.id!r} answered {what}, "
            "which only a run's top-level pipeline may answer; pause the child (Pause) and "
            "let the parent stage's router sleep or set the expiry"
        )
