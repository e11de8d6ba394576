"""RunActor: drives one run, stage by stage, and is its only writer.

The stage's work (steps, retries, timeouts) is done by the StageRunner it owns; what
each lifecycle event writes comes from `stageline.core.transitions`. This actor numbers
the run's events, routes each finished stage, carries out the commit the transition
returns, and concludes its child pipelines' stages (child actors never write).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pykka

from stageline.core import children as kids
from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.definition import Stage
from stageline.core.errors import (
    CommitRefused,
    InternalError,
    RunAborted,
    StagelineError,
    StateTooLarge,
)
from stageline.core.events import Event
from stageline.core.patch import copy_state, merge_all, public_state
from stageline.core.results import RunResult
from stageline.core.routing import Decision, route
from stageline.core.store import Commit, RunRecord
from stageline.core.supervision import attempt_errors

from . import telemetry
from .base import StagelineActor
from .child import ChildRunActor
from .child_launch import (
    ChildLink,
    ChildStart,
    LiveChildren,
    child_ended,
    launch_children,
    plan_children,
)
from .child_verdicts import child_event_maker, child_outcome, conclude_child
from .deps import RunDeps
from .export import pause_bundle, run_bundle
from .logs import conflict_logger
from .messages import (
    Abort,
    Begin,
    ChildEmit,
    ChildEnded,
    ChildStageEnded,
    ChildStarted,
    Drain,
    Verdict,
)
from .stage_runner import Place, StageRun, StageRunner


class RunActor(StagelineActor):
    """One run's mailbox and driver. Stops itself when the run ends or pauses."""

    def __init__(self, deps: RunDeps, record: RunRecord) -> None:
        super().__init__()
        self.deps = deps
        self.pipeline = deps.pipeline
        self.record = record
        self.status = record.status
        self.seq = record.last_seq
        self.place = Place(record.run_id, self.pipeline, self.pipeline.id)
        self.runner = StageRunner(self, deps, self.place, record.stage_runs)
        self.ended = False
        self.draining = False
        self.unjournaled: list[Event] = []
        """Children's stage:start events, numbered and delivered, for the next commit."""
        self.live = LiveChildren()

    # --- messages ---------------------------------------------------------------------

    def on_start(self) -> None:
        self.deps.container.open()

    def on_receive(self, message: Any) -> Any:
        if self.ended:
            return None
        try:
            return self._dispatch(message)
        except BaseException as exc:  # never let pykka stop this actor silently
            self._crash(exc)
            return None

    def _dispatch(self, message: Any) -> Any:
        if self.runner.handle(message):
            return None
        if isinstance(message, ChildEmit):
            if self.live.accepts(message.key, message.token):
                self._on_child_emit(message.event)
        elif isinstance(message, ChildStageEnded):
            return self._on_child_stage(message)
        elif isinstance(message, ChildStarted):
            self.live.add(message.key, message.token)
        elif isinstance(message, ChildEnded):
            if child_ended(self.runner.current, message):
                self.children_done(self.runner.current)
        else:
            self._on_control(message)
        return None

    def _on_control(self, message: Any) -> None:
        if isinstance(message, Begin):
            self._begin(message)
        elif isinstance(message, Abort):
            self._abort(message.reason)
        elif isinstance(message, Drain):
            self.draining = True
            if self.runner.current is not None:
                self.runner.current.tell_children(message)

    # --- the StageHost side -----------------------------------------------------------

    def tell(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # the run ended; a late completion has nobody to tell

    def event(self, name: str, stage_id: str, **payload: Any) -> Event:
        self.seq += 1
        run_id, pipeline_id, now = self.record.run_id, self.pipeline.id, self.deps.clock.wall()
        return ev.stage_event(name, run_id, pipeline_id, (), stage_id, self.seq, now, **payload)

    def emit(self, event: Event) -> None:
        self.deps.emitter.emit(event)

    def step_event(self, name: str, stage_id: str, **payload: Any) -> None:
        """Emit a step-level event, or only take its seq if nobody would see it."""
        if self.deps.emitter.wants(name):
            self.emit(self.event(name, stage_id, **payload))
        else:
            self.seq += 1

    def steps_done(self, run: StageRun) -> None:
        run.stop_timer()
        stage = run.stage
        patches = run.patches()
        on_conflict = conflict_logger(self.deps.logger, self.record.run_id, stage.id)
        state = merge_all(run.base, patches, on_conflict=on_conflict)
        results = dict(patches)
        try:
            decision = route(self.pipeline, stage, state, results)[1]
        except StagelineError as exc:
            self.runner.fail(exc)
            return
        self._conclude(run, state, results, decision)

    def stage_failed(self, run: StageRun, error: StagelineError) -> None:
        failure = self.event(ev.STAGE_FAILURE, run.stage.id, label=run.stage.label, error=error,
                             attempt=run.attempts())  # fmt: skip
        self._fail_run(run.stage.id, error, run.journal(failure))

    def stage_not_started(self, stage: Stage, error: StagelineError) -> None:
        self._fail_run(stage.id, error, ())

    def start_children(self, run: StageRun) -> None:
        run.start_journaled = True  # its stage:start joins the first child commit,
        self.unjournaled.append(run.start_event)  # so the journal stays in seq order
        try:
            starts = plan_children(self.place, run, self.record.state)
        except StagelineError as exc:
            self.runner.fail(exc)
            return
        link = ChildLink(self.actor_ref, self.actor_ref, run.number)
        launch_children(
            run, starts, self.live.announce, _child_starter(self.deps, self.record, link)
        )
        if not starts:
            self.children_done(run)

    def children_stopped(self, stage_id: str) -> None:
        self.live.forget(self.place.key, stage_id)

    def children_done(self, run: StageRun | None) -> None:
        """Every child of the stage ended: route the stage, or pause or fail it, and commit."""
        assert run is not None
        run.stop_timer()
        self.live.forget(self.place.key, run.stage.id)
        if run.drained:  # registry.stop(): the run stays at this stage, resumable
            self.runner.conclude()
            self._end(self._result(self.record.state))
            return
        results, state = run.child_results(), self.record.state
        try:
            decision = kids.decide_children(
                self.pipeline, self.place.key, run.stage, state, results
            )
        except StagelineError as exc:
            self.runner.fail(exc)
            return
        if decision.kind != "pause":
            state = kids.without_children_of(state, self.place.key, run.stage.id)
        self._conclude(run, state, kids.results_record(results), decision)

    # --- child pipelines --------------------------------------------------------------

    def _next_seq(self) -> int:
        self.seq += 1
        seq: int = self.seq
        return seq

    def _on_child_emit(self, event: Event) -> None:
        numbered = replace(event, seq=self._next_seq())
        if numbered.name == ev.STAGE_START:
            self.unjournaled.append(numbered)
        self.emit(numbered)

    def _on_child_stage(self, request: ChildStageEnded) -> Verdict | None:
        """Conclude a child's stage as one commit of the run; None if the run moved on."""
        run, scope = self.runner.current, request.scope
        if run is None or run.children is None or not self.live.accepts(scope.key, scope.token):
            return None  # the run or the parent stage moved on: this child is stale
        on_conflict = conflict_logger(self.deps.logger, self.record.run_id, request.stage.id)
        state, decision, error = conclude_child(request, self.record.state, on_conflict)
        verdict, position, event = child_outcome(
            request,
            state,
            decision,
            error,
            child_event_maker(request, self.record.run_id, self.deps.clock, self._next_seq),
        )
        if request.children is not None and verdict.kind in ("next", lifecycle.SUCCEEDED):
            state = kids.without_children_of(state, scope.key, request.stage.id)
        state = kids.with_position(state, scope.key, position)
        events = (event,) if request.started else ()
        patch = None if request.children is not None else dict(request.patches)
        commit = tr.stage_committed(
            self.record, self.deps.clock.wall(), self._progress(*events),
            next_stage=run.stage.id, state=state, patch=patch,
        )  # fmt: skip
        if not self._commit_closing(commit):
            return None  # refused for good: the parent stage (and the run) failed
        for delivered in events:
            self.emit(delivered)
        self.live.forget(scope.key, request.stage.id)
        if verdict.kind != "next":
            self.live.remove(scope.key)
        return replace(verdict, state=state)

    # --- concluding a stage -----------------------------------------------------------

    def _conclude(
        self, run: StageRun, state: dict[str, Any], results: dict[str, Any], decision: Decision
    ) -> None:
        if decision.kind in ("pause", "sleep"):
            self._stop_waiting(run, state, results, decision)
        else:
            self._commit_stage(run, state, results, decision)

    def _commit_stage(
        self, run: StageRun, state: dict[str, Any], results: dict[str, Any], decision: Decision
    ) -> None:
        stage, now = run.stage, self.deps.clock.wall()
        success = self.event(
            ev.STAGE_SUCCESS, stage.id, label=stage.label,
            results=copy_state(results), routing=decision.routing,  # events never alias state
            attempt=run.attempts(),
        )  # fmt: skip
        progress = self._progress(*run.journal(success))
        if decision.ends_run:
            commit = tr.succeed(self.record, now, progress, state=state, patch=results)
        else:
            commit = tr.stage_committed(
                self.record, now, progress, next_stage=decision.next_stage, state=state,
                patch=results,
            )  # fmt: skip
        if not self._commit_closing(commit):
            return
        self.runner.conclude()
        self.emit(success)
        if decision.ends_run:
            self.emit(commit.events[-1])
            self._end(self._result(state))
        elif self.draining:  # shutting down: stop between stages; the run stays resumable
            self._end(self._result(state))
        else:
            self.runner.start(str(decision.next_stage), self.record.state)

    def _stop_waiting(
        self, run: StageRun, state: dict[str, Any], results: dict[str, Any], decision: Decision
    ) -> None:
        """Commit a stage that pauses or sleeps the run, then stop: a paused or sleeping
        run holds no thread (a sleeping one's artifacts go into its checkpoint now)."""
        stage, pausing = run.stage, decision.kind == "pause"
        answer: Any = decision.pause if pausing else decision.sleep
        try:
            bundle = _waiting_bundle(self.deps, stage, answer, pausing)
        except StagelineError as exc:
            self.runner.fail(exc)
            return
        closing = self.event(
            ev.STAGE_PAUSED if pausing else ev.STAGE_SUCCESS, stage.id, label=stage.label,
            results=copy_state(results), routing=decision.routing, attempt=run.attempts(),
            **({"resume_at": answer.resume_at} if pausing else {}),
        )  # fmt: skip
        commit = (tr.pause if pausing else tr.sleep)(
            self.record, self.deps.clock.wall(), self._progress(*run.journal(closing)),
            pipeline=self.pipeline, stage=stage, answer=answer, state=state, patch=results,
            bundle=bundle,
        )  # fmt: skip
        if not self._commit_closing(commit):
            return
        self.runner.conclude()
        self.deps.container.stop()
        end = commit.events[-1]
        self.emit(closing)
        self.emit(end)
        self._end(replace(self._result(state), checkpoint=end.checkpoint), pause=answer)

    def _fail_run(
        self, stage_id: str, error: StagelineError, stage_events: tuple[Event, ...]
    ) -> None:
        """Record the run as failed at `stage_id`, keeping the state of its last commit."""
        progress = self._progress(*stage_events)
        commit = tr.fail(self.record, self.deps.clock.wall(), progress, stage=stage_id, error=error)
        self._apply(commit)
        for event in stage_events:
            if event.name != ev.STAGE_START:  # delivered when the stage started
                self.emit(event)
        self.emit(commit.events[-1])
        attempts = attempt_errors(self.record.error, error)
        result = self._result(self.record.state)
        self._end(replace(result, error=error, attempts=attempts))

    def _abort(self, reason: str | None) -> None:
        run = self.runner.stop()
        error = RunAborted(
            f"run {self.record.run_id!r} was aborted" + (f": {reason}" if reason else "")
        )
        stage_id = run.stage.id if run is not None else self.record.stage
        now = self.deps.clock.wall()
        commit = tr.abort(self.record, now, self._progress(), stage=stage_id, error=error)
        self._apply(commit)
        self.emit(commit.events[-1])
        self._end(replace(self._result(self.record.state), error=error))

    # --- persistence ------------------------------------------------------------------

    def _progress(self, *events: Event) -> tr.Progress:
        """Where the run stands for its next commit; children's stage:start events join."""
        if self.unjournaled:
            events = tuple(sorted((*self.unjournaled, *events), key=_seq_of))
            self.unjournaled = []
        return tr.Progress(self.seq, self.runner.stage_runs, events)

    def _apply(self, commit: Commit) -> None:
        self.seq = commit.last_seq  # numbers taken stay taken, even if the store refuses
        version = telemetry.commit(self.deps.store, commit)
        self.record = self.record.applied(commit, version)
        self.status = commit.status
        self.deps.on_commit(self.record)

    def _commit_closing(self, commit: Commit) -> bool:
        """Commit the stage; False if the store refused it for good (nothing written),
        which fails the stage, and so the run, with that StoreError."""
        try:
            self._apply(commit)
        except (StateTooLarge, CommitRefused) as exc:  # refused for good: retrying won't do
            self.runner.fail(exc)
            return False
        return True

    def _begin(self, message: Begin) -> None:
        if message.resumed:  # the claim committed this segment's pipeline:start already
            self.emit(tr.claimed_opening(self.record, message.entry))
        else:
            commit = tr.start(self.record, message.entry, self.deps.clock.wall())
            self._apply(commit)
            self.emit(commit.events[0])
        self.runner.start(message.entry, self.record.state)

    # --- ending -----------------------------------------------------------------------

    def _result(self, state: dict[str, Any]) -> RunResult:
        shown: dict[str, Any] = copy_state(public_state(state))
        return RunResult(self.record.run_id, self.pipeline.id, self.status, shown)

    def _end(
        self, result: RunResult | None, error: BaseException | None = None, pause: Any = None
    ) -> None:
        self.ended = True
        if self.status not in lifecycle.WAITING:  # stopped already
            self.deps.container.stop()
        self.deps.on_end(result, error, pause, self.record)
        self.stop()  # pykka's stop message, told: no future to build and drop

    def _crash(self, exc: BaseException) -> None:
        """A store error or a runtime bug: report it; the store keeps the last commit."""
        error = exc if isinstance(exc, StagelineError) else _internal(self.record.run_id, exc)
        self.runner.stop()
        self.seq += 1
        # last_seq: the seq of the failure event emitted here (not stored), so that a
        # registry recording the crash journals that same event.
        crashed = replace(self.record, last_seq=self.seq)
        try:
            self.emit(tr.crash_event(crashed, self.deps.clock.wall(), error))
        finally:
            self.ended = True
            self.deps.container.stop()
            self.deps.on_end(None, error, None, crashed)
            self.stop()


def _child_starter(deps: RunDeps, record: RunRecord, link: ChildLink) -> Any:
    def start(child: ChildStart) -> Any:
        return ChildRunActor.start(deps, record, child.scope, link, child.stage_runs)

    return start


def _waiting_bundle(deps: RunDeps, stage: Stage, answer: Any, pausing: bool) -> bytes | None:
    """The artifacts a pause (see `pause_bundle`) or a sleep (always) commit carries."""
    if pausing:
        return pause_bundle(deps, stage, answer)
    return run_bundle(deps, stage, "went to sleep")


def _internal(run_id: str, exc: BaseException) -> InternalError:
    error = InternalError(
        f"stageline runtime error in run {run_id!r}: {exc!r}; the run is left at its last "
        "commit and can be recovered. Please report this."
    )
    error.__cause__ = exc
    return error


def _seq_of(event: Event) -> int:
    seq: int = event.seq
    return seq
