"""What a child pipeline's concluded stage means for the run: state, verdict, position.

The root run concludes every stage of its children (it is the run's one writer): it
merges the child's patches into the run's state (or decides on the child's own
children), calls the child's router, and answers the child with a Verdict. These
functions make those decisions; the root commits and delivers what they return.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stageline.core import children as kids
from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core.clock import Clock
from stageline.core.errors import StagelineError, error_to_record
from stageline.core.events import Event
from stageline.core.patch import copy_state, merge_all
from stageline.core.routing import Decision, check_child_answer, route

from .messages import ChildStageEnded, Verdict

EventMaker = Callable[..., Event]
"""`make(name, **payload)`: an event of the child's concluded stage, numbered by the root."""


def conclude_child(
    request: ChildStageEnded, state: dict[str, Any], on_conflict: Any
) -> tuple[dict[str, Any], Decision | None, StagelineError | None]:
    """The run's state after a child's stage, and its routing (or why it failed)."""
    scope, stage = request.scope, request.stage
    if request.error is not None:
        return state, None, request.error
    try:
        if request.children is not None:
            decision = kids.decide_children(
                scope.pipeline, scope.key, stage, state, request.children
            )
            check_child_answer(scope.pipeline, stage.id, decision)
            return state, decision, None
        merged = merge_all(state, list(request.patches), on_conflict=on_conflict)
        decision = route(scope.pipeline, stage, merged, dict(request.patches))[1]
        check_child_answer(scope.pipeline, stage.id, decision)
        return merged, decision, None
    except StagelineError as exc:
        return state, None, exc


def child_outcome(
    request: ChildStageEnded,
    state: dict[str, Any],
    decision: Decision | None,
    error: StagelineError | None,
    make: EventMaker,
) -> tuple[Verdict, kids.Position, Event]:
    """What a child's concluded stage means: its verdict, new position and stage event."""
    stage, runs = request.stage, request.stage_runs
    if error is not None or decision is None:
        assert error is not None
        failed = kids.Position(lifecycle.FAILED, stage.id, runs, error=error_to_record(error))
        return (
            Verdict(lifecycle.FAILED, state, error=error),
            failed,
            make(ev.STAGE_FAILURE, error=error),
        )
    results = _results(request)
    if decision.kind == "pause":
        pause = decision.pause
        assert pause is not None
        paused = kids.Position(
            lifecycle.PAUSED, pause.resume_at, runs, pause.timeout, pause.persist
        )
        event = make(ev.STAGE_PAUSED, results=results, resume_at=pause.resume_at, routing="pause")
        return Verdict(lifecycle.PAUSED, state), paused, event
    success = make(ev.STAGE_SUCCESS, results=results, routing=decision.routing)
    if decision.ends_run:
        done = kids.Position(lifecycle.SUCCEEDED, None, runs)
        return Verdict(lifecycle.SUCCEEDED, state), done, success
    running = kids.Position(lifecycle.RUNNING, decision.next_stage, runs)
    return Verdict("next", state, decision.next_stage), running, success


def child_event_maker(
    request: ChildStageEnded, run_id: str, clock: Clock, next_seq: Callable[[], int]
) -> EventMaker:
    """Makes the events of a child's concluded stage, each numbered by `next_seq()`."""
    scope, stage = request.scope, request.stage

    def make(name: str, **payload: Any) -> Event:
        return ev.stage_event(
            name, run_id, scope.pipeline.id, scope.prefix, stage.id, next_seq(), clock.wall(),
            label=stage.label, **payload,
        )  # fmt: skip

    return make


def _results(request: ChildStageEnded) -> dict[str, Any]:
    if request.children is not None:
        recorded: dict[str, Any] = kids.results_record(request.children)
        return recorded
    results: dict[str, Any] = copy_state(dict(request.patches))  # events never alias state
    return results
