"""LiveRun: the one internal handle on a run in this process (actor, future, segment).

A RunContext (the user's handle) is a thin face over a LiveRun; the registry and the
factory talk to the LiveRun through the `RunHandle` protocol. Every segment of the run
(first start, each resume or restart) is driven by a new RunActor under the same
LiveRun; its `lock` guards the change of segment.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.definition import Pipeline
from stageline.core.errors import ConflictError, RunAborted, RunNotPaused, RunStateError
from stageline.core.events import Event
from stageline.core.patch import public_state
from stageline.core.results import RunResult
from stageline.core.store import RunRecord, Store

from .admission import take_slot
from .container import Container
from .context import RunContext
from .deps import RunDeps
from .export import export_paused
from .handle import SupervisorLink
from .messages import Abort, Begin, Drain
from .run import RunActor


class NotSettled(Exception):
    """The live run is still finishing its pause; resume through the store instead."""


class LiveRun:
    """One run in this process: its record as last committed, its actor and its future."""

    def __init__(
        self,
        deps_for: Callable[[LiveRun], RunDeps],
        record: RunRecord,
        entry: str,
        *,
        container: Container,
        resumed: bool = False,
        supervisor: SupervisorLink | None = None,
    ) -> None:
        self.run_id = record.run_id
        self.pipeline_id = record.pipeline_id
        self.status = record.status
        self.record = record
        self.entry = entry
        self.resumed = resumed
        self.lock = threading.Lock()
        self.future: concurrent.futures.Future[RunResult] | None = None
        self.actor: Any = None
        self.container = container
        self.supervisor = supervisor
        self.result: RunResult | None = None
        self.held = False
        """The registry holds this segment already (prepare() handed it over)."""
        self.segment = 0
        """Which segment of the run this handle drives; each resume or restart adds one.
        The registry ignores news about a segment that is no longer the current one."""
        self.deps = deps_for(self)
        self.context = RunContext(self, self.run_id, self.pipeline_id)

    @property
    def store(self) -> Store:
        return self.deps.store

    @property
    def pipeline(self) -> Pipeline:
        return self.deps.pipeline

    # --- the user's requests (through RunContext) --------------------------------------

    def subscribe(self, name: str, handler: Callable[[Event], Any]) -> Callable[[], None]:
        return self.deps.emitter.on(name, handler)

    def start(self) -> concurrent.futures.Future[RunResult]:
        with self.lock:
            self._check_startable()
            if self.status == lifecycle.PENDING and self.pipeline.limits:
                self._take_slot()  # its start commits now, or it is queued (raises: no start)
            self.future = future = _running_future()
            if self.status == lifecycle.QUEUED:
                actor = None
            else:
                self.actor = actor = RunActor.start(self.deps, self.record)
        if actor is None:
            self._queue()
            return future
        if self.supervisor is not None and not self.held:
            self.supervisor.track(self)
        actor.tell(Begin(self.entry, resumed=self.resumed))
        return future

    def _take_slot(self) -> None:
        """A first start through the pipeline's limits (called with `lock` held)."""
        lease = None if self.supervisor is None else self.supervisor.lease()
        now = self.deps.clock.wall()
        commit = tr.start(self.record, self.entry, now)
        self.record, _ = take_slot(self.store, self.pipeline, self.record, commit, lease, now)
        self.status = self.record.status
        self.resumed = True  # the start commit carried its pipeline:start

    def _queue(self) -> None:
        """Hand a queued run to the registry: it starts it when a slot frees."""
        if self.supervisor is not None:
            self.supervisor.queue(self)

    def hold(self) -> None:
        """Hand the run to its registry now, before it starts (no second notice then)."""
        if self.supervisor is not None:
            self.supervisor.track(self)
            self.held = True

    def _check_startable(self) -> None:
        if self.future is not None:
            raise RunStateError(
                f"run {self.run_id!r} was already started (status {self.status!r}); "
                "a RunContext runs once: prepare a new run, or resume a paused one"
            )
        if self.status not in (lifecycle.PENDING, lifecycle.QUEUED) and not self.resumed:
            raise RunStateError(f"run {self.run_id!r} is {self.status!r} and cannot start")
        if self.supervisor is not None and self.supervisor.stopped:
            raise RunStateError(
                f"run {self.run_id!r} cannot start: its registry was stopped; "
                "create a new Registry and PipelineFactory"
            )

    def wait(self, timeout: float | None = None) -> RunResult:
        with self.lock:
            future = self.future
        if future is None:
            raise RunStateError(f"run {self.run_id!r} was not started: call run() or start()")
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"run {self.run_id!r} did not end within {timeout}s; it goes on (status "
                f"{self.status!r}): wait() for it again, or abort it"
            ) from None

    def abort(self, reason: str | None = None) -> None:
        if self.status == lifecycle.FAILED and self.supervisor is not None:
            self.supervisor.cancel_restart(self.run_id)
            return
        with self.lock:
            if self.status in lifecycle.WAITING or self.status == lifecycle.QUEUED:
                event, result = self._abort_paused(reason)
            else:
                event = result = None
                actor = self._actor_to_abort()
        if event is not None:
            self.deps.emitter.emit(event)
            if self.supervisor is not None:
                self.supervisor.ended(self, result, None, None)
            _resolve(self.future, result, None)  # a queued run's start() waits on it
            return
        if actor is not None:
            try:
                actor.tell(Abort(reason))
            except Exception:
                pass  # already ended

    def abort_running(self, reason: str | None) -> None:
        if self.status == lifecycle.QUEUED:  # no actor: one compare-and-set
            self.abort(reason)
            return
        with self.lock:
            if self.status not in lifecycle.ACTIVE:
                return
            actor = self._actor_to_abort()  # a run prepared here, never started: now
        if actor is not None:
            try:
                actor.tell(Abort(reason))
            except Exception:
                pass  # already ended

    def _actor_to_abort(self) -> Any:
        """The running actor; a run never started gets one, to record its abort."""
        if self.future is None:
            self.future = _running_future()
            self.actor = RunActor.start(self.deps, self.record)
        return self.actor

    def _abort_paused(self, reason: str | None) -> tuple[Event, RunResult]:
        error = RunAborted(
            f"run {self.run_id!r} was aborted while {self.status}"
            + (f": {reason}" if reason else "")
        )
        record = self.record
        commit = tr.abort_paused(record, self.deps.clock.wall(), error)
        try:
            version = self.deps.store.commit(commit)
        except ConflictError as exc:
            raise RunNotPaused(
                f"run {self.run_id!r} is no longer {record.status} (resumed or woken "
                "elsewhere); not aborted"
            ) from exc
        self.record = record.applied(commit, version)
        self.status = commit.status
        state = public_state(record.state)
        self.result = RunResult(self.run_id, self.pipeline_id, commit.status, state, error=error)
        return commit.events[-1], self.result

    # --- the registry's requests (RunHandle) -------------------------------------------

    def drain(self) -> concurrent.futures.Future[RunResult] | None:
        with self.lock:
            actor, future = self.actor, self.future
        if actor is None or future is None or future.done():
            return None
        try:
            actor.tell(Drain())
        except Exception:
            return None
        return future

    def force_stop(self) -> None:
        with self.lock:
            actor, future = self.actor, self.future
        if actor is not None:
            try:
                actor.stop(block=False)
            except Exception:
                pass
        self.container.stop()
        if future is not None and not future.done():
            future.set_exception(
                RunStateError(
                    f"run {self.run_id!r} was stopped by registry.stop() before its stage "
                    "finished; it is left at its last commit (status 'running') to recover"
                )
            )

    def export(self, max_bytes: int) -> bool:
        """Called with `lock` held, so no resume claims the run meanwhile."""
        if self.status != lifecycle.PAUSED or self.record.checkpoint is None:
            return False  # resumed meanwhile: it is live again
        export_paused(self.deps.store, self.record, self.container, max_bytes)
        return True

    def claim_resume(self, claim: Callable[[RunRecord], RunRecord]) -> None:
        with self.lock:
            if self.status == lifecycle.SLEEPING:  # just went to sleep: the store wakes it
                raise NotSettled(self.run_id)
            if self.status != lifecycle.PAUSED or self.future is None:
                raise RunNotPaused(
                    f"run {self.run_id!r} is {self.status!r} in this process, not paused"
                )
            if not self.future.done() or self.result is None or not self.result.checkpoint:
                raise NotSettled(self.run_id)  # still finishing its pause: use the store
            self.record = claim(self.record)
            self.entry = self.result.checkpoint.resume_at
            self._next_segment(self.record)
            self.future = None
            self.actor = None

    def restart(self, record: RunRecord) -> None:
        with self.lock:
            self.record = record
            self.entry = str(record.stage)
            self._next_segment(record)
            self.result = None
            self.actor = actor = RunActor.start(self.deps, record)
        actor.tell(Begin(self.entry, resumed=True))

    def _next_segment(self, record: RunRecord) -> None:
        self.held = False  # its start tells the registry (and cancels a pause window)
        self.status = record.status
        self.resumed = True
        self.segment += 1

    def give_up(self, error: BaseException | None = None) -> None:
        with self.lock:
            future, result = self.future, self.result
        _resolve(future, result, error if result is None else None)

    def set_status(self, status: str) -> None:
        self.status = status

    # --- called from the RunActor's thread ---------------------------------------------

    def committed(self, record: RunRecord) -> None:
        with self.lock:
            self.record = record
            self.status = record.status

    def ended(
        self, result: RunResult | None, error: BaseException | None, pause: Any, record: RunRecord
    ) -> None:
        with self.lock:
            future = self.future
            if self.status == lifecycle.ABORTED and result is not None:
                result = replace(result, status=self.status)  # aborted while pausing
            self.result = result
            if record.version >= self.record.version:
                self.record = record
        supervisor = self.supervisor
        if supervisor is not None and supervisor.ended(self, result, pause, error):
            return  # the registry restarts the run: the future waits for the next segment
        _resolve(future, result, error)


def _running_future() -> concurrent.futures.Future[RunResult]:
    future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    return future


def _resolve(
    future: concurrent.futures.Future[RunResult] | None,
    result: RunResult | None,
    error: BaseException | None,
) -> None:
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)
