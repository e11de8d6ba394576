"""The stage runner: one stage's work (step slots, retries, timeouts, settle and doom).

Both a root run (RunActor) and a child pipeline (ChildRunActor) own one StageRunner and
differ only in what they do when the stage ends: the root commits it, a child asks the
root to. The runner reaches its owner through the narrow `StageHost` protocol. It never
blocks: steps run on the worker pool or the event loop and their completions, timeouts
and retries come back to the owner's mailbox as messages, which the owner hands to
`handle`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pykka

from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core.definition import Pipeline, Stage, Step
from stageline.core.errors import (
    RoutingError,
    StageError,
    StagelineError,
    StepFailure,
    StepTimeout,
    describe_error,
    exception_types,
)
from stageline.core.events import Event, PathNode
from stageline.core.patch import PIPELINE_DATA_KEY
from stageline.core.results import ChildResult
from stageline.core.routing import check_stage_budget
from stageline.core.timing import visible_state

from .deps import RunDeps
from .messages import Abort, RetryStep, StageTimedOut, StepDone, StepTimedOut
from .step_context import NotStarted, StepContext, Ticket, async_step, step_job
from .timers import TimerHandle


class StageHost(Protocol):
    """What a stage runner needs from the actor that owns it."""

    def tell(self, message: Any) -> None:
        """Send `message` to the owner's own mailbox (completions, timers)."""

    def event(self, name: str, stage_id: str, **payload: Any) -> Event:
        """A stage- or step-level event of the owner's pipeline."""
        ...

    def emit(self, event: Event) -> None:
        """Deliver `event` to the run's subscribers."""

    def step_event(self, name: str, stage_id: str, **payload: Any) -> None:
        """Emit a step-level event (or only account for it, if nobody would see it)."""

    def steps_done(self, run: StageRun) -> None:
        """Every step of `run` succeeded: merge, route and conclude the stage."""

    def stage_failed(self, run: StageRun, error: StagelineError) -> None:
        """The stage `run` failed; the runner already stopped it."""

    def stage_not_started(self, stage: Stage, error: StagelineError) -> None:
        """The run ran over its stage budget: `stage` never started."""

    def start_children(self, run: StageRun) -> None:
        """Start the child pipelines of `run`'s stage."""

    def children_stopped(self, stage_id: str) -> None:
        """The children of the owner's stage `stage_id` were told to stop."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a runner runs: its run, pipeline, path key and the path of its parent stage."""

    run_id: str
    pipeline: Pipeline
    key: str
    prefix: tuple[PathNode, ...] = ()

    @property
    def is_root(self) -> bool:
        return not self.prefix


@dataclass(slots=True)
class Slot:
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
class StageRun:
    """One execution of one stage."""

    stage: Stage
    number: int
    base: dict[str, Any]
    start_event: Event
    slots: dict[str, Slot] = field(default_factory=dict)
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
        return visible_state(self.base) if PIPELINE_DATA_KEY in self.base else self.base

    def stop_timer(self) -> None:
        _cancel(self.timer)

    def attempts(self) -> int | None:
        """The most attempts any of the stage's steps took (1: none was retried); None
        for a stage without steps. Its closing event carries it as `attempt`, so the
        journal tells which stages retried a step without a write of their own."""
        return max((slot.attempt for slot in self.slots.values()), default=None)

    def patches(self) -> list[tuple[str, Any]]:
        """The steps' patches in definition order."""
        return [(step.id, self.slots[step.id].patch) for step in self.stage.steps]

    def child_results(self) -> dict[str, ChildResult]:
        """Each child's result; a child that never reported counts as failed."""
        assert self.children is not None
        return {
            child.id: self.children[child.id] or ChildResult(lifecycle.FAILED)
            for child in self.stage.pipelines
        }

    def tell_children(self, message: Any) -> None:
        for ref in self.child_refs.values():
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass


class StageRunner:
    """Runs one stage at a time for its host: steps, retries, timeouts, the stage's end."""

    def __init__(self, host: StageHost, deps: RunDeps, place: Place, stage_runs: int) -> None:
        self.host = host
        self.deps = deps
        self.place = place
        self.stage_runs = stage_runs
        self.current: StageRun | None = None
        self.tokens: dict[int, Slot] = {}
        self.next_token = 0

    # --- messages ---------------------------------------------------------------------

    def handle(self, message: Any) -> bool:
        """Act on a message about the stage in flight; False if it is not one."""
        if isinstance(message, StepDone):
            self._on_step_done(message)
        elif isinstance(message, StepTimedOut):
            self._on_step_timeout(message.token)
        elif isinstance(message, RetryStep):
            self._on_retry(message)
        elif isinstance(message, StageTimedOut):
            self._on_stage_timeout(message.stage_run)
        else:
            return False
        return True

    # --- a stage starts ---------------------------------------------------------------

    def start(self, stage_id: str, base: dict[str, Any]) -> None:
        """Start stage `stage_id` on the state `base`; it reports back through the host."""
        stage = self.place.pipeline.stage(stage_id)
        self.stage_runs += 1
        try:
            check_stage_budget(self.place.pipeline, self.stage_runs, stage.id)
        except RoutingError as exc:
            self.host.stage_not_started(stage, exc)
            return
        start = self.host.event(ev.STAGE_START, stage.id, label=stage.label)
        run = StageRun(stage, self.stage_runs, base, start)
        self.current = run
        if stage.timeout is not None:  # armed before the event (see _step_failed)
            number = run.number
            run.timer = self._schedule(stage.timeout, StageTimedOut(number))
        self.host.emit(start)
        if stage.pipelines:
            self.host.start_children(run)
            return
        for step in stage.steps:
            slot = Slot(step, step.is_async)
            run.slots[step.id] = slot
            self._dispatch(run, slot)
        if not stage.steps:
            self.host.steps_done(run)

    def _schedule(self, delay: float, message: Any) -> TimerHandle:
        tell = self.host.tell
        return self.deps.timers.schedule(delay, lambda: tell(message))

    def _dispatch(self, run: StageRun, slot: Slot) -> None:
        step = slot.step
        slot.attempt += 1
        self.next_token += 1
        token = slot.token = self.next_token
        self.tokens[token] = slot
        ctx = slot.ctx = self._step_context(run, slot, token)
        self.host.step_event(ev.STEP_START, run.stage.id, step_id=step.id, attempt=slot.attempt)
        where = f"step {step.id!r} of stage {run.stage.id!r} in pipeline {self.place.pipeline.id!r}"
        if slot.is_async:
            future = self.deps.workers.run_coroutine(
                async_step(token, step.action, run.view, ctx, where)
            )
            slot.future = future
            future.add_done_callback(_async_reply(self.host.tell))
        else:
            slot.ticket = Ticket()
            job = step_job(token, step.action, run.view, ctx, where, self.host.tell, slot.ticket)
            self.deps.workers.submit(job)

    def _step_context(self, run: StageRun, slot: Slot, token: int) -> StepContext:
        step, place = slot.step, self.place
        deadline = None
        if step.timeout is not None:
            deadline = self.deps.clock.monotonic() + step.timeout
            slot.timer = self._schedule(step.timeout, StepTimedOut(token))
        return StepContext(
            run_id=place.run_id,
            pipeline_id=place.pipeline.id,
            stage_id=run.stage.id,
            step_id=step.id,
            attempt=slot.attempt,
            path=(*place.prefix, PathNode(place.pipeline.id, run.stage.id)),
            deadline=deadline,
            artifacts=self.deps.container.view(
                place.key, f" (step {step.id!r} of stage {run.stage.id!r})"
            ),
            logger=self.deps.logger,
        )

    # --- steps end --------------------------------------------------------------------

    def _on_step_done(self, done: StepDone) -> None:
        slot = self.tokens.pop(done.token, None)
        run = self.current
        if slot is None or run is None:
            return
        _cancel(slot.timer)
        if done.error is None:
            slot.patch = done.patch
            slot.done = True
            self.deps.container.record_result(self.result_key(run, slot), done.patch)
            self.host.step_event(
                ev.STEP_SUCCESS, run.stage.id,
                step_id=slot.step.id, attempt=slot.attempt, duration=done.duration,
            )  # fmt: skip
            self._maybe_finish(run)
        elif isinstance(done.error, NotStarted) and run.doomed:
            slot.done = True  # a sibling failed first; this one never ran, so it did not fail
            self._maybe_finish(run)
        else:
            self._step_failed(run, slot, done.error, done.traceback, done.duration)

    def result_key(self, run: StageRun, slot: Slot) -> str:
        """Where a step's result is kept among the run's artifacts."""
        key = f"{run.stage.id}/{slot.step.id}"
        return key if self.place.is_root else f"{self.place.key}/{key}"

    def _on_step_timeout(self, token: int) -> None:
        slot = self.tokens.pop(token, None)
        run = self.current
        if slot is None or run is None:
            return
        self._abandon(slot)
        timeout = float(slot.step.timeout or 0.0)
        self._step_failed(run, slot, StepTimeout(timeout), "", timeout)

    def _abandon(self, slot: Slot) -> None:
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
        self, run: StageRun, slot: Slot, error: BaseException, tb: str, duration: float
    ) -> None:
        if not run.doomed and slot.attempt <= slot.step.retries:
            self._retry_later(run, slot, (error, tb, duration))
            return
        self._record_failure(run, slot, error, tb, duration)
        if not run.doomed:
            run.doomed = True
            self._settle_siblings(run)
        self._maybe_finish(run)

    def _retry_later(
        self, run: StageRun, slot: Slot, failed: tuple[BaseException, str, float]
    ) -> None:
        step = slot.step
        backoff = step.backoff(slot.attempt)
        if backoff > 0:  # armed before the event, so a test that sees it can advance time
            slot.waiting = failed
            slot.retry_timer = self._schedule(backoff, RetryStep(step.id, run.number))
        error, _, duration = failed
        self.host.emit(
            self.host.event(
                ev.STEP_RETRY, run.stage.id,
                step_id=step.id, attempt=slot.attempt, error=error, duration=duration,
            )
        )  # fmt: skip
        if backoff <= 0:
            self._dispatch(run, slot)

    def _record_failure(
        self, run: StageRun, slot: Slot, error: BaseException, tb: str, duration: float
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
        self.host.emit(
            self.host.event(
                ev.STEP_FAILURE, run.stage.id,
                step_id=slot.step.id, attempt=slot.attempt, error=error, duration=duration,
            )
        )  # fmt: skip

    def _settle_siblings(self, run: StageRun) -> None:
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
        self._dispatch(run, slot)

    def _on_stage_timeout(self, number: int) -> None:
        run = self.current
        if run is None or run.number != number:
            return
        self.fail(
            StageError(
                f"stage {run.stage.label}:{run.stage.id} exceeded its timeout of "
                f"{run.stage.timeout}s",
                stage_id=run.stage.id,
                kind="stage_timeout",
            )
        )

    def _maybe_finish(self, run: StageRun) -> None:
        if all(slot.done for slot in run.slots.values()):
            if run.doomed:
                self.fail(_stage_error(run))
            else:
                self.host.steps_done(run)

    # --- the stage ends ---------------------------------------------------------------

    def fail(self, error: StagelineError) -> None:
        """Stop the stage in flight and report it failed with `error`."""
        run = self.stop()
        assert run is not None
        self.host.stage_failed(run, error)

    def conclude(self) -> StageRun:
        """The stage in flight is being concluded: stop its timer and let it go."""
        run = self.current
        assert run is not None
        _cancel(run.timer)
        self.current = None
        return run

    def stop(self) -> StageRun | None:
        """Stop waiting for anything of the stage in flight; signal its steps and children."""
        run = self.current
        if run is None:
            return None
        _cancel(run.timer)
        for slot in run.slots.values():
            if not slot.done:
                self._abandon(slot)
        run.tell_children(Abort("the parent stage stopped"))
        run.child_refs.clear()
        self.host.children_stopped(run.stage.id)
        self.tokens.clear()
        self.current = None
        return run


def _async_reply(tell: Callable[[Any], None]) -> Callable[[concurrent.futures.Future[Any]], None]:
    def reply(future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            return
        tell(future.result())

    return reply


def _cancel(timer: TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def _stage_error(run: StageRun) -> StageError:
    failures = tuple(s.failure for s in run.slots.values() if s.failure is not None)
    ordered = tuple(f for step in run.stage.steps for f in failures if f.step_id == step.id)
    summary = "; ".join(f"{f.step_id}: {f.message}" for f in ordered)
    return StageError(
        f"{len(ordered)} step(s) failed in {run.stage.label}:{run.stage.id}: {summary}",
        stage_id=run.stage.id,
        steps=ordered,
    )
