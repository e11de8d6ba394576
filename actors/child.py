"""ChildRunActor: runs one child pipeline of a stage, as a child actor of the same run.

A child runs its stages' steps (or its own children) with a StageRunner, like a root
run, but it never writes to the store and never numbers events: the root RunActor is the
run's one writer. The child sends its events to the root (ChildEmit), and asks the root
to conclude each of its stages (ChildStageEnded): the root merges the patches into the
run's state, calls the child's router, commits the stage with the child's new position,
delivers the stage event and answers with a Verdict. When the child ends, it tells its
parent (ChildEnded).

Children emit stage and step events only: a run has exactly one pipeline:start and one
terminal pipeline event, its root's. A child's ending shows in its parent stage's results.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pykka

from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core.definition import Stage
from stageline.core.errors import InternalError, StagelineError
from stageline.core.events import Event
from stageline.core.store import RunRecord

from .base import StagelineActor
from .child_launch import ChildLink, ChildStart, child_ended, launch_children, plan_children
from .deps import RunDeps
from .messages import (
    Abort,
    Begin,
    ChildEmit,
    ChildEnded,
    ChildScope,
    ChildStageEnded,
    ChildStarted,
    Drain,
    Verdict,
)
from .stage_runner import Place, StageRun, StageRunner

_PATIENCE = 1.0
"""Seconds between checks that the root still lives while a child waits for its verdict."""


class ChildRunActor(StagelineActor):
    """One child pipeline of one stage run of its parent (the root or another child)."""

    def __init__(
        self, deps: RunDeps, record: RunRecord, scope: ChildScope, link: ChildLink, stage_runs: int
    ) -> None:
        super().__init__()
        self.deps = replace(deps, pipeline=scope.pipeline)
        self.record = record
        self.scope = scope
        self.link = link
        self.place = Place(record.run_id, scope.pipeline, scope.key, scope.prefix)
        self.runner = StageRunner(self, self.deps, self.place, stage_runs)
        self.ended = False
        self.draining = False

    # --- messages ---------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if self.ended:
            return None
        try:
            self._dispatch(message)
        except BaseException as exc:  # never let pykka stop this actor silently
            self._crash(exc)
        return None

    def _dispatch(self, message: Any) -> None:
        if self.runner.handle(message):
            return
        if isinstance(message, Begin):
            self.runner.start(message.entry, self.record.state)
        elif isinstance(message, ChildEnded):
            if child_ended(self.runner.current, message):
                self.children_done(self.runner.current)
        elif isinstance(message, Abort):
            self.runner.stop()
            self._stop_quietly()
        elif isinstance(message, Drain):
            self.draining = True
            if self.runner.current is not None:
                self.runner.current.tell_children(message)

    # --- the StageHost side: events go to the root, which numbers and delivers them ----

    def tell(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # the child ended; a late completion has nobody to tell

    def event(self, name: str, stage_id: str, **payload: Any) -> Event:
        place, now = self.place, self.deps.clock.wall()
        pipeline_id = place.pipeline.id
        return ev.stage_event(
            name, place.run_id, pipeline_id, place.prefix, stage_id, 0, now, **payload
        )

    def emit(self, event: Event) -> None:
        self._tell_root(ChildEmit(event, self.scope.key, self.scope.token))

    def step_event(self, name: str, stage_id: str, **payload: Any) -> None:
        if self.deps.emitter.wants(name):
            self.emit(self.event(name, stage_id, **payload))

    def steps_done(self, run: StageRun) -> None:
        self.runner.conclude()
        patches = tuple(run.patches())
        self._ask_and_go_on(ChildStageEnded(self.scope, run.stage, self.runner.stage_runs, patches))

    def stage_failed(self, run: StageRun, error: StagelineError) -> None:
        request = ChildStageEnded(self.scope, run.stage, self.runner.stage_runs, error=error)
        self._ask_and_go_on(request)

    def stage_not_started(self, stage: Stage, error: StagelineError) -> None:
        runs = self.runner.stage_runs
        self._ask_root(ChildStageEnded(self.scope, stage, runs, error=error, started=False))

    def start_children(self, run: StageRun) -> None:
        try:
            starts = plan_children(self.place, run, self.record.state)
        except StagelineError as exc:
            self.runner.fail(exc)
            return
        link = ChildLink(self.link.root, self.actor_ref, run.number)
        announce = self._announce
        launch_children(run, starts, announce, lambda start: self._start_child(link, start))
        if not starts:
            self.children_done(run)

    def children_stopped(self, stage_id: str) -> None:
        pass  # the root keeps the run's live children

    def children_done(self, run: StageRun | None) -> None:
        assert run is not None
        self.runner.conclude()
        if run.drained:
            self._end_child("drained")
            return
        runs = self.runner.stage_runs
        request = ChildStageEnded(self.scope, run.stage, runs, children=run.child_results())
        self._ask_and_go_on(request)

    # --- children of this child -------------------------------------------------------

    def _announce(self, scope: ChildScope) -> None:
        self._tell_root(ChildStarted(scope.key, scope.token))

    def _start_child(self, link: ChildLink, start: ChildStart) -> Any:
        return ChildRunActor.start(self.deps, self.record, start.scope, link, start.stage_runs)

    # --- stage ends: the root concludes them ------------------------------------------

    def _ask_and_go_on(self, request: ChildStageEnded) -> None:
        """Have the root conclude the stage; go on to the next one if the verdict says so."""
        verdict = self._ask_root(request)
        if verdict is None or verdict.kind != "next":
            return
        self.record = replace(self.record, state=verdict.state)
        if self.draining:
            self._end_child("drained")
            return
        self.runner.start(str(verdict.next_stage), self.record.state)

    def _ask_root(self, request: ChildStageEnded) -> Verdict | None:
        """Have the root commit; then end this child unless it goes on to another stage."""
        verdict = self._answer(request)
        if verdict is None:  # the run ended or the parent stage stopped meanwhile
            self._stop_quietly()
        elif verdict.kind != "next":
            self._end_child(verdict.kind, verdict.error)
        return verdict

    def _answer(self, request: ChildStageEnded) -> Verdict | None:
        """The root's verdict; None if the root stopped (then no answer would ever come)."""
        root = self.link.root
        try:
            future = root.ask(request, block=False)
        except pykka.ActorDeadError:
            return None
        while True:
            try:
                verdict: Verdict | None = future.get(timeout=_PATIENCE)
                return verdict
            except pykka.Timeout:
                if not root.is_alive():
                    return None
            except pykka.ActorDeadError:
                return None

    # --- ending -----------------------------------------------------------------------

    def _tell_root(self, message: Any) -> None:
        try:
            self.link.root.tell(message)
        except pykka.ActorDeadError:
            pass  # the run ended; the child's requests find no root

    def _end_child(self, status: str, error: StagelineError | None = None) -> None:
        self.ended = True
        try:
            self.link.parent.tell(
                ChildEnded(self.place.pipeline.id, self.link.stage_run, status, error)
            )
        except pykka.ActorDeadError:
            pass
        self.stop()

    def _stop_quietly(self) -> None:
        self.ended = True
        self.stop()

    def _crash(self, exc: BaseException) -> None:
        """A runtime bug in this child: its stage fails; the run keeps its last commit."""
        self.runner.stop()
        error = InternalError(
            f"stageline runtime error in child pipeline {self.place.key!r} of run "
            f"{self.record.run_id!r}: {exc!r}; it is left at its last commit. Please report this."
        )
        error.__cause__ = exc
        self._end_child(lifecycle.FAILED, error)
