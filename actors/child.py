"""ChildRunActor: runs one child pipeline of a stage, as a child actor of the same run.

A child runs its stages' steps (or its own children) exactly like a RunActor, but it never
writes to the store and never numbers events: the root RunActor is the run's one writer.
The child sends its events to the root (ChildEmit), and asks the root to conclude each of
its stages (ChildStageEnded): the root merges the patches into the run's state, calls the
child's router, commits the stage with the child's new position, delivers the stage event
and answers with a Verdict. When the child ends, it tells its parent (ChildEnded).

Children emit stage and step events only: a run has exactly one pipeline:start and one
terminal pipeline event, its root's. A child's ending shows in its parent stage's results.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pykka

from stageline.core import children as kids
from stageline.core.errors import InternalError, StagelineError
from stageline.core.events import Event
from stageline.core.results import RunResult
from stageline.core.store import RunRecord

from .messages import (
    Begin,
    ChildEmit,
    ChildEnded,
    ChildScope,
    ChildStageEnded,
    ChildStarted,
    Verdict,
)
from .run import RunActor, RunDeps, _child_results, _StageRun

_PATIENCE = 1.0
"""Seconds between checks that the root still lives while a child waits for its verdict."""


class ChildRunActor(RunActor):
    """One child pipeline of one stage run of its parent (the root or another child)."""

    def __init__(
        self,
        deps: RunDeps,
        record: RunRecord,
        scope: ChildScope,
        parent: RunActor,
        stage_run: int,
        stage_runs: int,
    ) -> None:
        super().__init__(replace(deps, pipeline=scope.pipeline), record)
        self.stage_runs = stage_runs
        self.key = scope.key
        self.prefix = scope.prefix
        self.scope = scope
        self.root = parent._root_ref()
        self.parent = parent.actor_ref
        self.parent_stage_run = stage_run

    def on_start(self) -> None:
        pass  # the root opened the run's container; children share it

    def _root_ref(self) -> Any:
        return self.root

    def _register_child(self, scope: ChildScope) -> None:
        try:
            self.root.tell(ChildStarted(scope.key, scope.token))
        except pykka.ActorDeadError:
            pass  # the run ended; the child's requests will find no root

    def _forget_children(self, key: str, stage_id: str) -> None:
        pass  # the root keeps the run's live children

    def _begin(self, message: Begin) -> None:
        self._start_stage(message.entry)

    # --- events: numbered and delivered by the root -----------------------------------

    def _event(self, name: str, stage_id: str | None = None, **payload: Any) -> Event:
        return self._scoped_event(self.pipeline.id, self.prefix, name, stage_id, **payload)

    def _emit(self, event: Event) -> Event:
        try:
            self.root.tell(ChildEmit(event, self.scope.key, self.scope.token))
        except pykka.ActorDeadError:
            pass  # the run ended
        return event

    def _step_event(self, name: str, stage_id: str, **payload: Any) -> None:
        if self.deps.emitter.wants(name):
            self._emit(self._event(name, stage_id, **payload))

    def _result_key(self, run: _StageRun, slot: Any) -> str:
        return f"{self.key}/{run.stage.id}/{slot.step.id}"

    # --- stage ends: the root concludes them ------------------------------------------

    def _finish_stage(self, run: _StageRun) -> None:
        patches = tuple((step.id, run.slots[step.id].patch) for step in run.stage.steps)
        self._conclude(run, ChildStageEnded(self.scope, run.stage, self.stage_runs, patches))

    def _finish_children(self, run: _StageRun) -> None:
        if run.drained:
            self.current = None
            self._end_child("drained")
            return
        request = ChildStageEnded(
            self.scope, run.stage, self.stage_runs, children=_child_results(run)
        )
        self._conclude(run, request)

    def _fail_stage(self, error: StagelineError) -> None:
        run = self.current
        assert run is not None
        self._stop_stage(run)
        self._conclude(run, ChildStageEnded(self.scope, run.stage, self.stage_runs, error=error))

    def _fail_run(
        self, stage_id: str, error: StagelineError, stage_events: tuple[Event, ...]
    ) -> None:
        stage = self.pipeline.stage(stage_id)  # a stage this child could not start
        request = ChildStageEnded(self.scope, stage, self.stage_runs, error=error, started=False)
        self._ask_root(request)

    def _conclude(self, run: _StageRun, request: ChildStageEnded) -> None:
        self._stop_timer(run)
        verdict = self._ask_root(request)
        if verdict is None or verdict.kind != "next":
            return
        self.record = replace(self.record, state=verdict.state)
        if self.draining:
            self._end_child("drained")
            return
        self._start_stage(str(verdict.next_stage))

    def _stop_timer(self, run: _StageRun) -> None:
        if run.timer is not None:
            run.timer.cancel()
        self.current = None

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
        try:
            future = self.root.ask(request, block=False)
        except pykka.ActorDeadError:
            return None
        while True:
            try:
                verdict: Verdict | None = future.get(timeout=_PATIENCE)
                return verdict
            except pykka.Timeout:
                if not self.root.is_alive():
                    return None
            except pykka.ActorDeadError:
                return None

    # --- ending -----------------------------------------------------------------------

    def _end_child(self, status: str, error: StagelineError | None = None) -> None:
        self.ended = True
        try:
            self.parent.tell(ChildEnded(self.pipeline.id, self.parent_stage_run, status, error))
        except pykka.ActorDeadError:
            pass
        self.stop_soon()

    def _stop_quietly(self) -> None:
        self.ended = True
        self.stop_soon()

    def _end(
        self, result: RunResult | None, error: BaseException | None = None, pause: Any = None
    ) -> None:
        self._stop_quietly()  # not reached: the root ends the run

    def _abort(self, reason: str | None) -> None:
        if self.current is not None:
            self._stop_stage(self.current)
        self._stop_quietly()

    def _crash(self, exc: BaseException) -> None:
        """A runtime bug in this child: its stage fails; the run keeps its last commit."""
        if self.current is not None:
            self._stop_stage(self.current)
        error = InternalError(
            f"stageline runtime error in child pipeline {self.key!r} of run "
            f"{self.record.run_id!r}: {exc!r}; it is left at its last commit. Please report this."
        )
        error.__cause__ = exc
        self._end_child(kids.FAILED, error)
