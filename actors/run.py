"""RunActor: drives one run, stage by stage, and is its only writer.

The actor never blocks on a step: steps run on the worker pool or the event loop and
their completions, timeouts, retries and aborts come back as messages. Decisions are made
by `stageline.core` (lifecycle table, routing, merge); this module carries them out and
commits each stage as one store transaction.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pykka

from stageline.core import children as kids
from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core.checkpoint import Checkpoint, checkpoint_to_bytes
from stageline.core.clock import Clock, iso_utc
from stageline.core.definition import Pipeline, Stage, Step
from stageline.core.errors import (
    BundleError,
    InternalError,
    RoutingError,
    RunAborted,
    StageError,
    StagelineError,
    StateTooLarge,
    StepFailure,
    StepTimeout,
    describe_error,
    error_to_record,
    exception_types,
)
from stageline.core.events import Event, PathNode
from stageline.core.patch import PIPELINE_DATA_KEY, copy_state, merge_all, public_state
from stageline.core.results import ChildResult, RunResult
from stageline.core.routing import Decision, check_stage_budget, decide
from stageline.core.store import Commit, RunRecord, Store
from stageline.core.supervision import attempt_errors, with_attempts

from .base import StagelineActor
from .container import Container
from .emitter import Emitter
from .logs import STDLIB_LOGGER
from .messages import (
    Abort,
    Begin,
    ChildEmit,
    ChildEnded,
    ChildScope,
    ChildStageEnded,
    ChildStarted,
    Drain,
    RetryStep,
    StageTimedOut,
    StepDone,
    StepTimedOut,
    Verdict,
)
from .step_context import NotStarted, StepContext, Ticket, async_step, step_job
from .timers import TimerHandle, TimerService
from .workers import Workers


@dataclass(slots=True)
class _Slot:
    """Bookkeeping for one step of the running stage."""

    step: Step
    is_async: bool
    attempt: int = 0
    token: int = 0
    ctx: StepContext | None = None
    timer: TimerHandle | None = None
    future: concurrent.futures.Future[Any] | None = None
    ticket: Ticket | None = None
    patch: Any = None
    failure: StepFailure | None = None
    done: bool = False
    retry_timer: TimerHandle | None = None
    waiting: tuple[BaseException, str, float] | None = None
    """The last failed attempt's (error, traceback, duration) while a retry is pending."""


@dataclass(slots=True)
class _StageRun:
    stage: Stage
    number: int
    base: dict[str, Any]
    start_event: Event
    slots: dict[str, _Slot] = field(default_factory=dict)
    doomed: bool = False
    timer: TimerHandle | None = None
    children: dict[str, ChildResult | None] | None = None
    """For a stage with child pipelines: each child's result, None while it runs."""
    child_refs: dict[str, Any] = field(default_factory=dict)
    drained: bool = False
    start_journaled: bool = False
    """The stage:start event went into an earlier commit (a stage with children)."""

    def journal(self, *events: Event) -> tuple[Event, ...]:
        """The stage's events for its closing commit, with stage:start unless it was sent."""
        return events if self.start_journaled else (self.start_event, *events)

    @property
    def view(self) -> dict[str, Any]:
        """The state steps see: the stage-start state without the runtime's records."""
        return public_state(self.base) if PIPELINE_DATA_KEY in self.base else self.base


@dataclass(frozen=True, slots=True)
class RunDeps:
    """What a RunActor needs from its factory: collaborators, not run state."""

    pipeline: Pipeline
    store: Store
    clock: Clock
    timers: TimerService
    workers: Workers
    emitter: Emitter
    logger: Any
    container: Container
    on_commit: Callable[[RunRecord], None]
    on_end: Callable[[RunResult | None, BaseException | None, Any, RunRecord], None]
    max_bundle_bytes: int
    live_window: bool = False
    """True when a registry holds paused runs live (and exports their artifacts later)."""


class RunActor(StagelineActor):
    """One run's mailbox and driver. Stops itself when the run ends or pauses."""

    def __init__(self, deps: RunDeps, record: RunRecord) -> None:
        super().__init__()
        self.deps = deps
        self.pipeline = deps.pipeline
        self.record = record
        self.status = record.status
        self.seq = record.last_seq
        self.stage_runs = record.stage_runs
        self.tokens: dict[int, _Slot] = {}
        self.next_token = 0
        self.current: _StageRun | None = None
        self.ended = False
        self.draining = False
        self.key = self.pipeline.id
        """The path key: the artifact namespace; children's keys extend it."""
        self.prefix: tuple[PathNode, ...] = ()
        """The path of the parent stage (empty for the root pipeline)."""
        self.root_path = (PathNode(self.pipeline.id, None),)
        self.unjournaled: list[Event] = []
        self.live: dict[str, int] = {}
        """The root's children (any depth) whose requests it accepts: path key -> token."""
        """Children's stage:start events, numbered and delivered, for the next commit."""
        self._wall = deps.clock.wall

    # ------------------------------------------------------------------ messages

    def on_receive(self, message: Any) -> Any:
        if self.ended:
            return None
        try:
            return self._dispatch(message)
        except BaseException as exc:  # never let pykka stop this actor silently
            self._crash(exc)
            return None

    def _dispatch(self, message: Any) -> Any:
        if isinstance(message, StepDone):
            self._on_step_done(message)
        elif isinstance(message, StepTimedOut):
            self._on_step_timeout(message.token)
        elif isinstance(message, RetryStep):
            self._on_retry(message)
        elif isinstance(message, StageTimedOut):
            self._on_stage_timeout(message.stage_run)
        elif isinstance(message, Begin):
            self._begin(message)
        elif isinstance(message, ChildEmit):
            if self.live.get(message.key) == message.token:
                self._on_child_emit(message.event)
        elif isinstance(message, ChildStarted):
            self.live[message.key] = message.token
        elif isinstance(message, ChildStageEnded):
            return self._on_child_stage(message)
        elif isinstance(message, ChildEnded):
            self._on_child_ended(message)
        elif isinstance(message, Abort):
            self._abort(message.reason)
        elif isinstance(message, Drain):
            self.draining = True
            if self.current is not None:
                self._tell_children(self.current, message)
        return None

    def _tell(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # the run ended; a late completion has nobody to tell

    # ------------------------------------------------------------------ events

    def _event(self, name: str, stage_id: str | None = None, **payload: Any) -> Event:
        self.seq += 1
        return self._scoped_event(self.pipeline.id, self.prefix, name, stage_id, **payload)

    def _scoped_event(
        self,
        pipeline_id: str,
        prefix: tuple[PathNode, ...],
        name: str,
        stage_id: str | None,
        **payload: Any,
    ) -> Event:
        """An event of `pipeline_id` (whose parent stage is at `prefix`), at the current seq."""
        path = self.root_path if stage_id is None else (*prefix, PathNode(pipeline_id, stage_id))
        return Event(
            name=name,
            run_id=self.record.run_id,
            path=path,
            seq=self.seq,
            ts=self._wall(),
            pipeline_id=pipeline_id,
            stage_id=stage_id,
            **payload,
        )

    def _emit(self, event: Event) -> Event:
        self.deps.emitter.emit(event)
        return event

    def _step_event(self, name: str, stage_id: str, **payload: Any) -> None:
        """Emit a step-level event, or only take its seq if nobody would see it."""
        if self.deps.emitter.wants(name):
            self._emit(self._event(name, stage_id, **payload))
        else:
            self.seq += 1

    # ------------------------------------------------------------------ run start

    def on_start(self) -> None:
        self.deps.container.open()

    def _begin(self, message: Begin) -> None:
        if message.resumed:
            # The resume's claim committed this segment's pipeline:start already.
            start = Event(
                name=ev.PIPELINE_START,
                run_id=self.record.run_id,
                path=self.root_path,
                seq=self.record.last_seq,
                ts=self.record.updated_at,
                pipeline_id=self.pipeline.id,
                entry=message.entry,
                resumed=True,
            )
        else:
            start = self._event(ev.PIPELINE_START, entry=message.entry, resumed=False)
            self._commit("start", message.entry, self.record.state, (start,))
        self._emit(start)
        self._start_stage(message.entry)

    # ------------------------------------------------------------------ stages

    def _start_stage(self, stage_id: str) -> None:
        stage = self.pipeline.stage(stage_id)
        self.stage_runs += 1
        try:
            check_stage_budget(self.pipeline, self.stage_runs, stage.id)
        except RoutingError as exc:
            self._fail_run(stage.id, exc, ())
            return
        start = self._event(ev.STAGE_START, stage.id, label=stage.label)
        run = _StageRun(stage, self.stage_runs, self.record.state, start)
        self.current = run
        if stage.timeout is not None:  # armed before the event (see _step_failed)
            number = run.number
            run.timer = self.deps.timers.schedule(
                stage.timeout, lambda: self._tell(StageTimedOut(number))
            )
        self._emit(start)
        if stage.pipelines:
            self._start_children(run)
            return
        for step in stage.steps:
            slot = _Slot(step, step.is_async)
            run.slots[step.id] = slot
            self._dispatch_step(run, slot)
        if not stage.steps:
            self._finish_stage(run)

    def _dispatch_step(self, run: _StageRun, slot: _Slot) -> None:
        step = slot.step
        slot.attempt += 1
        self.next_token += 1
        token = slot.token = self.next_token
        self.tokens[token] = slot
        deadline = None
        if step.timeout is not None:
            deadline = self.deps.clock.monotonic() + step.timeout
            slot.timer = self.deps.timers.schedule(
                step.timeout, lambda: self._tell(StepTimedOut(token))
            )
        ctx = slot.ctx = StepContext(
            run_id=self.record.run_id,
            pipeline_id=self.pipeline.id,
            stage_id=run.stage.id,
            step_id=step.id,
            attempt=slot.attempt,
            path=(*self.prefix, PathNode(self.pipeline.id, run.stage.id)),
            deadline=deadline,
            artifacts=self.deps.container.view(
                self.key, f" (step {step.id!r} of stage {run.stage.id!r})"
            ),
            logger=self.deps.logger,
        )
        self._step_event(ev.STEP_START, run.stage.id, step_id=step.id, attempt=slot.attempt)
        where = f"step {step.id!r} of stage {run.stage.id!r} in pipeline {self.pipeline.id!r}"
        if slot.is_async:
            future = self.deps.workers.run_coroutine(
                async_step(token, step.action, run.view, ctx, where)
            )
            slot.future = future
            future.add_done_callback(self._async_reply(token))
        else:
            slot.ticket = Ticket()
            job = step_job(token, step.action, run.view, ctx, where, self._tell, slot.ticket)
            self.deps.workers.submit(job)

    def _async_reply(self, token: int) -> Callable[[concurrent.futures.Future[Any]], None]:
        def reply(future: concurrent.futures.Future[Any]) -> None:
            if future.cancelled():
                return
            self._tell(future.result())

        return reply

    def _on_step_done(self, done: StepDone) -> None:
        slot = self.tokens.pop(done.token, None)
        run = self.current
        if slot is None or run is None:
            return
        _cancel(slot.timer)
        if done.error is None:
            slot.patch = done.patch
            slot.done = True
            self.deps.container.record_result(self._result_key(run, slot), done.patch)
            self._step_event(
                ev.STEP_SUCCESS,
                run.stage.id,
                step_id=slot.step.id,
                attempt=slot.attempt,
                duration=done.duration,
            )
            self._maybe_finish(run)
        elif isinstance(done.error, NotStarted) and run.doomed:
            slot.done = True  # a sibling failed first; this one never ran, so it did not fail
            self._maybe_finish(run)
        else:
            self._step_failed(run, slot, done.error, done.traceback, done.duration)

    def _result_key(self, run: _StageRun, slot: _Slot) -> str:
        return f"{run.stage.id}/{slot.step.id}"

    def _on_step_timeout(self, token: int) -> None:
        slot = self.tokens.pop(token, None)
        run = self.current
        if slot is None or run is None:
            return
        self._abandon(slot)
        timeout = float(slot.step.timeout or 0.0)
        self._step_failed(run, slot, StepTimeout(timeout), "", timeout)

    def _abandon(self, slot: _Slot) -> None:
        """Signal a running attempt to stop and stop waiting for it."""
        _cancel(slot.timer)
        if slot.ctx is not None:
            slot.ctx.aborted.set()
            slot.ctx.artifacts.close()
        if slot.future is not None:
            slot.future.cancel()
        if slot.ticket is not None:
            slot.ticket.abandon(self.deps.workers)

    def _step_failed(
        self, run: _StageRun, slot: _Slot, error: BaseException, tb: str, duration: float
    ) -> None:
        step = slot.step
        if not run.doomed and slot.attempt <= step.retries:
            backoff = step.backoff(slot.attempt)
            if backoff > 0:  # armed before the event, so a test that sees it can advance time
                message = RetryStep(step.id, run.number)
                slot.waiting = (error, tb, duration)
                slot.retry_timer = self.deps.timers.schedule(backoff, lambda: self._tell(message))
            self._emit(
                self._event(
                    ev.STEP_RETRY,
                    run.stage.id,
                    step_id=step.id,
                    attempt=slot.attempt,
                    error=error,
                    duration=duration,
                )
            )
            if backoff <= 0:
                self._dispatch_step(run, slot)
            return
        self._record_failure(run, slot, error, tb, duration)
        if not run.doomed:
            run.doomed = True
            self._settle_siblings(run)
        self._maybe_finish(run)

    def _record_failure(
        self, run: _StageRun, slot: _Slot, error: BaseException, tb: str, duration: float
    ) -> None:
        slot.done = True
        slot.waiting = None
        slot.failure = StepFailure(
            step_id=slot.step.id,
            type=type(error).__name__,
            message=describe_error(error),
            traceback=tb,
            attempts=slot.attempt,
            types=exception_types(error),
        )
        self._emit(
            self._event(
                ev.STEP_FAILURE,
                run.stage.id,
                step_id=slot.step.id,
                attempt=slot.attempt,
                error=error,
                duration=duration,
            )
        )

    def _settle_siblings(self, run: _StageRun) -> None:
        """A step failed for good: the stage will fail. Decide now about every sibling.

        A sibling waiting out a retry backoff fails with its last error (no more retries);
        a running sibling with a timeout is signalled and waited for (its timeout bounds
        the wait, and the error will list it if it fails); one with no timeout is
        signalled and let go at once, so a step that ignores `ctx.aborted` cannot hold
        the run.
        """
        for other in run.slots.values():
            if other.done:
                continue
            if other.waiting is not None:
                _cancel(other.retry_timer)
                self._record_failure(run, other, *other.waiting)
            elif other.step.timeout is None:
                self.tokens.pop(other.token, None)
                self._abandon(other)
                other.done = True
            elif other.ctx is not None:
                other.ctx.aborted.set()

    def _on_retry(self, message: RetryStep) -> None:
        run = self.current
        if run is None or run.number != message.stage_run:
            return
        slot = run.slots[message.step_id]
        if run.doomed or slot.done:
            return  # settled when the stage was doomed
        slot.waiting = None
        self._dispatch_step(run, slot)

    def _on_stage_timeout(self, number: int) -> None:
        run = self.current
        if run is None or run.number != number:
            return
        self._fail_stage(
            StageError(
                f"stage {run.stage.label}:{run.stage.id} exceeded its timeout of "
                f"{run.stage.timeout}s",
                stage_id=run.stage.id,
                kind="stage_timeout",
            )
        )

    def _maybe_finish(self, run: _StageRun) -> None:
        if all(slot.done for slot in run.slots.values()):
            if run.doomed:
                self._fail_stage(_stage_error(run))
            else:
                self._finish_stage(run)

    # ------------------------------------------------------------------ stage end

    def _finish_stage(self, run: _StageRun) -> None:
        _cancel(run.timer)
        stage = run.stage
        patches = [(step.id, run.slots[step.id].patch) for step in stage.steps]
        state = merge_all(run.base, patches, on_conflict=self._conflict_logger(stage.id))
        results = {step_id: patch for step_id, patch in patches}
        try:
            decision = self._route(self.pipeline, stage, state, results)[1]
        except StagelineError as exc:
            self._fail_stage(exc)
            return
        if decision.kind == "pause":
            self._pause(run, state, results, decision)
            return
        self._commit_stage(run, state, results, decision)

    def _route(
        self, pipeline: Pipeline, stage: Stage, state: dict[str, Any], results: dict[str, Any]
    ) -> tuple[bool, Decision]:
        """Call the stage's router; also say whether it answered (returned not None)."""
        if stage.router is None:
            return False, decide(pipeline, stage.id, None)
        try:
            answer = stage.router(_user_state(state), copy_state(results))
        except BaseException as exc:
            raise StageError(
                f"router of stage {stage.label}:{stage.id} raised {describe_error(exc)}",
                stage_id=stage.id,
                kind="router",
                traceback="".join(traceback.format_exception(exc)),
            ) from exc
        return answer is not None, decide(pipeline, stage.id, answer)

    def _commit_stage(
        self, run: _StageRun, state: dict[str, Any], results: dict[str, Any], decision: Decision
    ) -> None:
        stage = run.stage
        success = self._event(
            ev.STAGE_SUCCESS,
            stage.id,
            label=stage.label,
            results=copy_state(results),  # handlers may mutate events: never the state
            routing=decision.routing,
        )
        events = run.journal(success)
        if decision.ends_run:
            end = self._event(ev.PIPELINE_SUCCESS, state=_user_state(state))
            if not self._commit_closing("succeed", None, state, (*events, end), patch=results):
                return
            self.current = None
            self._emit(success)
            self._emit(end)
            self._end(
                RunResult(self.record.run_id, self.pipeline.id, self.status, _user_state(state))
            )
            return
        if not self._commit_closing("commit", decision.next_stage, state, events, patch=results):
            return
        self.current = None
        self._emit(success)
        if self.draining:  # shutting down: stop between stages; the run stays resumable
            public = _user_state(state)
            self._end(RunResult(self.record.run_id, self.pipeline.id, self.status, public))
            return
        self._start_stage(str(decision.next_stage))

    def _pause(
        self, run: _StageRun, state: dict[str, Any], results: dict[str, Any], decision: Decision
    ) -> None:
        """Commit the stage with a checkpoint, then stop: a paused run holds no thread."""
        stage, pause = run.stage, decision.pause
        assert pause is not None
        checkpoint = Checkpoint(
            run_id=self.record.run_id,
            pipeline_id=self.pipeline.id,
            pipeline_version=self.pipeline.version,
            resume_at=pause.resume_at,
            paused_at_stage_id=stage.id,
            paused_at_stage_label=str(stage.label),
            paused_on=iso_utc(self._wall()),
            children=copy_state(kids.positions(state)),
        )
        if pause.persist or not self.deps.live_window:
            # Without a registry nobody would export the artifacts later: persist them now.
            try:
                bundle = self.deps.container.export_bundle(self.deps.max_bundle_bytes)
            except BundleError as exc:
                self._fail_stage(
                    StageError(
                        f"stage {stage.label}:{stage.id} paused but its run's artifacts "
                        f"cannot be bundled: {exc}",
                        stage_id=stage.id,
                        kind="bundle",
                    )
                )
                return
            checkpoint = checkpoint.with_bundle(bundle)
        paused = self._event(
            ev.STAGE_PAUSED, stage.id, label=stage.label, results=copy_state(results),
            resume_at=pause.resume_at, routing="pause",
        )  # fmt: skip
        public = _user_state(state)
        end = self._event(
            ev.PIPELINE_PAUSED, checkpoint=checkpoint, state=public, pause_timeout=pause.timeout
        )
        if not self._commit_closing(
            "pause", pause.resume_at, state, run.journal(paused, end),
            patch=results, checkpoint=checkpoint_to_bytes(checkpoint),
        ):  # fmt: skip
            return
        self.current = None
        self.deps.container.stop()
        self._emit(paused)
        self._emit(end)
        result = RunResult(
            self.record.run_id, self.pipeline.id, self.status, public, checkpoint=checkpoint
        )
        self._end(result, pause=pause)

    def _fail_stage(self, error: StagelineError) -> None:
        run = self.current
        assert run is not None
        self._stop_stage(run)
        failure = self._event(ev.STAGE_FAILURE, run.stage.id, label=run.stage.label, error=error)
        self._fail_run(run.stage.id, error, run.journal(failure))

    def _fail_run(
        self, stage_id: str, error: StagelineError, stage_events: tuple[Event, ...]
    ) -> None:
        """Record the run as failed at `stage_id`, keeping the state of its last commit."""
        state = self.record.state
        end = self._event(ev.PIPELINE_FAILURE, error=error, state=_user_state(state))
        self._commit("fail", stage_id, state, (*stage_events, end), error=error)
        for event in stage_events:
            if event.name == ev.STAGE_START:
                continue  # delivered when the stage started
            self._emit(event)
        self._emit(end)
        attempts = attempt_errors(self.record.error, error)
        public = _user_state(state)
        run_id = self.record.run_id
        self._end(RunResult(run_id, self.pipeline.id, self.status, public, None, error, attempts))

    def _stop_stage(self, run: _StageRun) -> None:
        """Stop waiting for anything of the current stage; signal its steps and children."""
        _cancel(run.timer)
        for slot in run.slots.values():
            if not slot.done:
                self._abandon(slot)
        self._tell_children(run, Abort("the parent stage stopped"))
        run.child_refs.clear()
        self._forget_children(self.key, run.stage.id)
        self.tokens.clear()
        self.current = None

    def _abort(self, reason: str | None) -> None:
        run = self.current
        if run is not None:
            self._stop_stage(run)
        error = RunAborted(
            f"run {self.record.run_id!r} was aborted" + (f": {reason}" if reason else "")
        )
        end = self._event(ev.PIPELINE_FAILURE, error=error, state=_user_state(self.record.state))
        stage_id = run.stage.id if run is not None else self.record.stage
        self._commit("abort", stage_id, self.record.state, (end,), error=error)
        self._emit(end)
        self._end(
            RunResult(
                self.record.run_id,
                self.pipeline.id,
                self.status,
                _user_state(self.record.state),
                error=error,
            )
        )

    # ------------------------------------------------------------------ child pipelines

    def _start_children(self, run: _StageRun) -> None:
        """Start the stage's child pipelines; those that already succeeded are skipped."""
        from .child import ChildRunActor  # child.py subclasses this module's RunActor

        stage = run.stage
        run.children = {}
        if self.prefix == ():  # the root: its stage:start joins the first child commit,
            run.start_journaled = True  # so the journal stays in seq order
            self.unjournaled.append(run.start_event)
        prefix = (*self.prefix, PathNode(self.pipeline.id, stage.id))
        starts = []
        for child in stage.pipelines:
            key = kids.child_key(self.key, stage.id, child.id)
            position = kids.position_of(self.record.state, key)
            settled = kids.settled(position)
            if settled is not None:
                run.children[child.id] = settled
                continue
            try:
                entry = kids.entry_of(child, position, key)
            except StagelineError as exc:
                self._fail_stage(exc)
                return
            run.children[child.id] = None
            scope = ChildScope(child, key, prefix, next(_tokens))
            runs = 0 if position is None else position.stage_runs
            starts.append((scope, entry, runs, position is not None))
        for scope, entry, runs, resumed in starts:
            self._register_child(scope)
            ref = ChildRunActor.start(self.deps, self.record, scope, self, run.number, runs)
            run.child_refs[scope.pipeline.id] = ref
            ref.tell(Begin(entry, resumed=resumed))
        if not starts:
            self._finish_children(run)

    def _root_ref(self) -> Any:
        return self.actor_ref

    def _register_child(self, scope: ChildScope) -> None:
        self.live[scope.key] = scope.token

    def _forget_children(self, key: str, stage_id: str) -> None:
        """Stop hearing from the children of a concluded or stopped stage (any depth)."""
        prefix = f"{key}/{stage_id}/"
        for child_key in [k for k in self.live if k.startswith(prefix)]:
            del self.live[child_key]

    def _tell_children(self, run: _StageRun, message: Any) -> None:
        for ref in run.child_refs.values():
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass

    def _on_child_ended(self, message: ChildEnded) -> None:
        run = self.current
        if run is None or run.children is None or run.number != message.stage_run:
            return  # the stage stopped (abort, timeout) before this child ended
        run.child_refs.pop(message.child_id, None)
        if message.status == "drained":
            run.drained = True
        run.children[message.child_id] = ChildResult(message.status, message.error)
        if all(result is not None for result in run.children.values()):
            self._finish_children(run)

    def _finish_children(self, run: _StageRun) -> None:
        """Every child ended: route the stage, or pause or fail it, and commit."""
        _cancel(run.timer)
        self._forget_children(self.key, run.stage.id)
        if run.drained:  # registry.stop(): the run stays at this stage, resumable
            self.current = None
            state = _user_state(self.record.state)
            self._end(RunResult(self.record.run_id, self.pipeline.id, self.status, state))
            return
        results = _child_results(run)
        state = self.record.state
        try:
            decision = self._decide_children(self.pipeline, self.key, run.stage, state, results)
        except StagelineError as exc:
            self._fail_stage(exc)
            return
        summary = kids.results_record(results)
        if decision.kind == "pause":
            self._pause(run, state, summary, decision)
            return
        state = kids.without_children_of(state, self.key, run.stage.id)
        self._commit_stage(run, state, summary, decision)

    def _decide_children(
        self,
        pipeline: Pipeline,
        key: str,
        stage: Stage,
        state: dict[str, Any],
        results: dict[str, ChildResult],
    ) -> Decision:
        """Paused children pause the stage; failed ones fail it unless the router answers."""
        outcome = kids.outcome_of(results)
        if outcome == kids.PAUSED:
            paused = [
                kids.position_of(state, kids.child_key(key, stage.id, child_id))
                for child_id, result in results.items()
                if result.status == kids.PAUSED
            ]
            pause = kids.children_pause(stage, [p for p in paused if p is not None])
            return Decision("pause", stage.id, pause)
        answered, decision = self._route(pipeline, stage, state, results)
        if outcome == kids.FAILED and not answered:
            raise kids.children_failure(stage, results)
        return decision

    def _on_child_emit(self, event: Event) -> None:
        self.seq += 1
        numbered = replace(event, seq=self.seq)
        if numbered.name == ev.STAGE_START:
            self.unjournaled.append(numbered)
        self._emit(numbered)

    def _on_child_stage(self, request: ChildStageEnded) -> Verdict | None:
        """Conclude a child's stage as one commit of the run; None if the run moved on."""
        run = self.current
        scope = request.scope
        if run is None or run.children is None or self.live.get(scope.key) != scope.token:
            return None  # the run or the parent stage moved on: this child is stale
        state, decision, error = self._conclude_child(request)
        verdict, position, event = self._child_outcome(request, state, decision, error)
        if request.children is not None and verdict.kind in ("next", kids.SUCCEEDED):
            state = kids.without_children_of(state, scope.key, request.stage.id)
        state = kids.with_position(state, scope.key, position)
        patch = None if request.children is not None else dict(request.patches)
        events = (event,) if request.started else ()
        self._commit("commit", run.stage.id, state, events, patch=patch)
        for event in events:
            self._emit(event)
        self._forget_children(scope.key, request.stage.id)
        if verdict.kind != "next":
            del self.live[scope.key]
        return replace(verdict, state=state)

    def _conclude_child(
        self, request: ChildStageEnded
    ) -> tuple[dict[str, Any], Decision | None, StagelineError | None]:
        """The run's state after a child's stage, and its routing (or why it failed)."""
        scope, stage, state = request.scope, request.stage, self.record.state
        if request.error is not None:
            return state, None, request.error
        try:
            if request.children is not None:
                children = request.children
                return (
                    state,
                    self._decide_children(scope.pipeline, scope.key, stage, state, children),
                    None,
                )
            logger = self._conflict_logger(stage.id)
            merged = merge_all(state, list(request.patches), on_conflict=logger)
            return (
                merged,
                self._route(scope.pipeline, stage, merged, dict(request.patches))[1],
                None,
            )
        except StagelineError as exc:
            return state, None, exc

    def _child_outcome(
        self,
        request: ChildStageEnded,
        state: dict[str, Any],
        decision: Decision | None,
        error: StagelineError | None,
    ) -> tuple[Verdict, kids.Position, Event]:
        """What a child's concluded stage means: its verdict, new position and event."""
        scope, stage, runs = request.scope, request.stage, request.stage_runs
        self.seq += 1

        def event(name: str, **payload: Any) -> Event:
            return self._scoped_event(
                scope.pipeline.id, scope.prefix, name, stage.id, label=stage.label, **payload
            )

        if error is not None or decision is None:
            assert error is not None
            failed = kids.Position(kids.FAILED, stage.id, runs, error=error_to_record(error))
            return (
                Verdict(kids.FAILED, state, error=error),
                failed,
                event(ev.STAGE_FAILURE, error=error),
            )
        if request.children is not None:
            results: dict[str, Any] = kids.results_record(request.children)
        else:
            results = copy_state(dict(request.patches))  # events never alias the state
        if decision.kind == "pause":
            pause = decision.pause
            assert pause is not None
            paused = kids.Position(kids.PAUSED, pause.resume_at, runs, pause.timeout, pause.persist)
            return (
                Verdict(kids.PAUSED, state),
                paused,
                event(ev.STAGE_PAUSED, results=results, resume_at=pause.resume_at, routing="pause"),
            )
        success = event(ev.STAGE_SUCCESS, results=results, routing=decision.routing)
        if decision.ends_run:
            return (
                Verdict(kids.SUCCEEDED, state),
                kids.Position(kids.SUCCEEDED, None, runs),
                success,
            )
        running = kids.Position(kids.RUNNING, decision.next_stage, runs)
        return Verdict("next", state, decision.next_stage), running, success

    # ------------------------------------------------------------------ persistence

    def _commit(
        self,
        lifecycle_event: str,
        stage_id: str | None,
        state: dict[str, Any],
        events: tuple[Event, ...],
        *,
        error: BaseException | None = None,
        patch: dict[str, Any] | None = None,
        checkpoint: bytes | None = None,
    ) -> None:
        status = lifecycle.transition(self.status, lifecycle_event)
        record = self.record
        if self.unjournaled:  # children's stage:start events join the next commit
            events = tuple(sorted((*self.unjournaled, *events), key=_seq_of))
            self.unjournaled = []
        if checkpoint is None and status == lifecycle.RUNNING:
            checkpoint = record.checkpoint  # kept until the transaction that ends the run
        commit = Commit(
            run_id=record.run_id,
            expected_version=record.version,
            status=status,
            stage=stage_id,
            state=state,
            last_seq=self.seq,
            stage_runs=self.stage_runs,
            updated_at=self.deps.clock.wall(),
            events=events,
            error=None if error is None else with_attempts(error_to_record(error), state),
            patch=patch,
            checkpoint=checkpoint,
        )
        version = self.deps.store.commit(commit)
        self.record = record.applied(commit, version)
        self.status = status
        self.deps.on_commit(self.record)

    def _commit_closing(
        self,
        lifecycle_event: str,
        stage_id: str | None,
        state: dict[str, Any],
        events: tuple[Event, ...],
        **fields: Any,
    ) -> bool:
        """Commit the current stage's closing transaction; False if the store refused a
        state it could not hold (StateTooLarge: nothing written), which fails the stage."""
        try:
            self._commit(lifecycle_event, stage_id, state, events, **fields)
        except StateTooLarge as exc:
            self._fail_stage(exc)
            return False
        return True

    def _conflict_logger(self, stage_id: str) -> Callable[[str, str, str], None] | None:
        if not STDLIB_LOGGER.isEnabledFor(logging.DEBUG) and self.deps.logger is None:
            return None
        log = self.deps.logger or STDLIB_LOGGER

        def conflict(path: str, earlier: str, later: str) -> None:
            message = f"patch_conflict run_id={self.record.run_id} stage_id={stage_id} "
            message += f"path={path} earlier={earlier} winner={later}"
            if isinstance(log, logging.Logger):
                log.debug(message)
            else:
                log.debug("patch_conflict", path=path, earlier=earlier, winner=later)

        return conflict

    # ------------------------------------------------------------------ ending

    def _end(
        self, result: RunResult | None, error: BaseException | None = None, pause: Any = None
    ) -> None:
        self.ended = True
        if self.status != lifecycle.PAUSED:
            self.deps.container.stop()
        self.deps.on_end(result, error, pause, self.record)
        self.stop_soon()

    def stop_soon(self) -> None:
        self.stop()  # pykka's stop message, told: no future to build and drop

    def _crash(self, exc: BaseException) -> None:
        """A store error or a runtime bug: report it; the store keeps the last commit."""
        if isinstance(exc, StagelineError):
            error: BaseException = exc
        else:
            error = InternalError(
                f"stageline runtime error in run {self.record.run_id!r}: {exc!r}; the run is "
                "left at its last commit and can be recovered. Please report this."
            )
            error.__cause__ = exc
        if self.current is not None:
            self._stop_stage(self.current)
        try:
            self._emit(
                self._event(ev.PIPELINE_FAILURE, error=error, state=_user_state(self.record.state))
            )
        finally:
            self.ended = True
            self.deps.container.stop()
            # last_seq: the seq of the failure event just emitted (not stored), so that a
            # registry recording the crash journals that same event.
            self.deps.on_end(None, error, None, replace(self.record, last_seq=self.seq))
            self.stop_soon()


_tokens = itertools.count(1)  # next() on a count is atomic: child tokens from any thread


def _seq_of(event: Event) -> int:
    seq: int = event.seq
    return seq


def _cancel(timer: TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def _child_results(run: _StageRun) -> dict[str, ChildResult]:
    assert run.children is not None
    return {
        child.id: run.children[child.id] or ChildResult(kids.FAILED)
        for child in run.stage.pipelines
    }


def _stage_error(run: _StageRun) -> StageError:
    failures = tuple(s.failure for s in run.slots.values() if s.failure is not None)
    ordered = tuple(f for step in run.stage.steps for f in failures if f.step_id == step.id)
    summary = "; ".join(f"{f.step_id}: {f.message}" for f in ordered)
    return StageError(
        f"{len(ordered)} step(s) failed in {run.stage.label}:{run.stage.id}: {summary}",
        stage_id=run.stage.id,
        steps=ordered,
    )


def _user_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of the state for users (results, events): theirs to mutate, never ours."""
    copied: dict[str, Any] = copy_state(public_state(state))
    return copied
