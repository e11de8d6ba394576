"""RunContext: the handle a user holds on one run (subscribe, run, start, abort)."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core.errors import (
    ConflictError,
    RunAborted,
    RunNotPaused,
    RunStateError,
    error_to_record,
)
from stageline.core.events import Event, PathNode
from stageline.core.patch import copy_state, public_state
from stageline.core.results import RunResult
from stageline.core.store import RunRecord, commit_from

from .container import Container
from .messages import Abort, Begin, Drain
from .run import RunActor, RunDeps

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["RunContext", "RunResult"]


class _NotSettled(Exception):
    """The live context is still finishing its pause; resume through the store instead."""


class RunContext:
    """One run, prepared or resumed by a PipelineFactory.

    `run()` blocks until the run ends (or pauses) and returns a RunResult; `start()`
    returns a `concurrent.futures.Future` of it; `await run_async()` is the asyncio form.
    A context runs once per segment: after a pause, `factory.resume(run_id)` re-arms the
    same context (the registry's fast path) or builds a new one. `run(timeout=...)` that
    times out raises TimeoutError and leaves the run going.
    """

    def __init__(
        self,
        deps_for: Callable[[RunContext], RunDeps],
        record: RunRecord,
        entry: str,
        *,
        container: Container,
        resumed: bool = False,
        registry: Registry | None = None,
    ) -> None:
        self.run_id: str = record.run_id
        self.pipeline_id: str = record.pipeline_id
        self._status: str = record.status
        self._record = record
        self._entry = entry
        self._resumed = resumed
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[RunResult] | None = None
        self._actor: Any = None
        self._container = container
        self._registry = registry
        self._result: RunResult | None = None
        self._segment = 0
        """Which segment of the run this context drives; each resume or restart adds one.
        The registry ignores news about a segment that is no longer the current one."""
        self._deps = deps_for(self)

    def __repr__(self) -> str:
        return (
            f"RunContext(run_id={self.run_id!r}, pipeline_id={self.pipeline_id!r}, "
            f"status={self.status!r})"
        )

    @property
    def status(self) -> str:
        """The run's status as this process last saw it."""
        return self._status

    @property
    def result(self) -> RunResult | None:
        """The last RunResult of this context (None while it has not ended or paused)."""
        return self._result

    def on(self, name: str, handler: Callable[[Event], Any]) -> Callable[[], None]:
        """Call `handler(event)` for each event named `name` ("*" for all); returns unsubscribe."""
        return self._deps.emitter.on(name, handler)

    def start(self) -> concurrent.futures.Future[RunResult]:
        """Start the run in the background; the future resolves to its RunResult."""
        with self._lock:
            if self._future is not None:
                raise RunStateError(
                    f"run {self.run_id!r} was already started (status {self._status!r}); "
                    "a RunContext runs once: prepare a new run, or resume a paused one"
                )
            if self._status != lifecycle.PENDING and not self._resumed:
                raise RunStateError(f"run {self.run_id!r} is {self._status!r} and cannot start")
            if self._registry is not None and self._registry._stopped:
                raise RunStateError(
                    f"run {self.run_id!r} cannot start: its registry was stopped; "
                    "create a new Registry and PipelineFactory"
                )
            self._future = concurrent.futures.Future()
            self._future.set_running_or_notify_cancel()
            self._actor = RunActor.start(self._deps, self._record)
        if self._registry is not None:
            self._registry._track(self)
        self._actor.tell(Begin(self._entry, resumed=self._resumed))
        return self._future

    def run(self, timeout: float | None = None) -> RunResult:
        """Run to the end (or to a pause) and return the result."""
        self.start()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> RunResult:
        """Wait for a run already started (by `start()`, `registry.retry`, `recover`) to end.

        With a supervising registry that includes its restarts. TimeoutError if it has not
        ended within `timeout`; RunStateError if the run was never started.
        """
        with self._lock:
            future = self._future
        if future is None:
            raise RunStateError(f"run {self.run_id!r} was not started: call run() or start()")
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"run {self.run_id!r} did not end within {timeout}s; it goes on (status "
                f"{self._status!r}): wait() for it again, or abort it"
            ) from None

    async def run_async(self) -> RunResult:
        """`await` the run without blocking the event loop."""
        import asyncio  # imported here: a process that never awaits pays nothing for it

        return await asyncio.wrap_future(self.start())

    def abort(self, reason: str | None = None) -> None:
        """End the run "aborted" promptly; in-flight steps are signalled and discarded.

        A paused run is aborted by one compare-and-set in the store (no actor starts);
        RunNotPaused if it was resumed elsewhere meanwhile. A failed run waiting for its
        registry's restart is not restarted: it stays failed and its future ends.
        """
        if self._status == lifecycle.FAILED and self._registry is not None:
            self._registry._cancel_restart(self.run_id)
            return
        with self._lock:
            if self._status == lifecycle.PAUSED:
                event, result = self._abort_paused(reason)
            else:
                event = result = None
                actor = self._actor
                if self._future is None:
                    self._future = concurrent.futures.Future()
                    self._future.set_running_or_notify_cancel()
                    self._actor = actor = RunActor.start(self._deps, self._record)
        if event is not None:
            self._deps.emitter.emit(event)
            if self._registry is not None:
                self._registry._ended(self, result, None)
            return
        if actor is not None:
            try:
                actor.tell(Abort(reason))
            except Exception:
                pass  # already ended

    def _abort_paused(self, reason: str | None) -> tuple[Event, RunResult]:
        record = self._record
        error = RunAborted(
            f"run {self.run_id!r} was aborted while paused" + (f": {reason}" if reason else "")
        )
        state = public_state(record.state)
        event = Event(
            name=ev.PIPELINE_FAILURE,
            run_id=self.run_id,
            path=(PathNode(self.pipeline_id, None),),
            seq=record.last_seq + 1,
            ts=self._deps.clock.wall(),
            pipeline_id=self.pipeline_id,
            error=error,
            state=copy_state(state),
        )
        commit = commit_from(
            record,
            "abort",
            event.ts,
            last_seq=event.seq,
            events=(event,),
            checkpoint=None,
            error=error_to_record(error),
        )
        try:
            version = self._deps.store.commit(commit)
        except ConflictError as exc:
            raise RunNotPaused(
                f"run {self.run_id!r} is no longer paused (resumed elsewhere); not aborted"
            ) from exc
        self._record = record.applied(commit, version)
        self._status = commit.status
        self._result = RunResult(self.run_id, self.pipeline_id, commit.status, state, error=error)
        return event, self._result

    # --- shutdown ---------------------------------------------------------------------

    def _drain(self) -> concurrent.futures.Future[RunResult] | None:
        """Ask a running run to stop after its current stage commits (registry.stop)."""
        with self._lock:
            actor, future = self._actor, self._future
        if actor is None or future is None or future.done():
            return None
        try:
            actor.tell(Drain())
        except Exception:
            return None
        return future

    def _force_stop(self) -> None:
        """Stop the run's actors now; the store keeps its last commit (like a crash)."""
        with self._lock:
            actor, future = self._actor, self._future
        if actor is not None:
            try:
                actor.stop(block=False)
            except Exception:
                pass
        self._container.stop()
        if future is not None and not future.done():
            future.set_exception(
                RunStateError(
                    f"run {self.run_id!r} was stopped by registry.stop() before its stage "
                    "finished; it is left at its last commit (status 'running') to recover"
                )
            )

    # --- the registry's fast path -----------------------------------------------------

    def _claim_resume(self, claim: Callable[[RunRecord], RunRecord]) -> None:
        """Re-arm this paused context for another segment; `claim` does the store CAS."""
        with self._lock:
            if self._status != lifecycle.PAUSED or self._future is None:
                raise RunNotPaused(
                    f"run {self.run_id!r} is {self._status!r} in this process, not paused"
                )
            if not self._future.done() or self._result is None or not self._result.checkpoint:
                raise _NotSettled(self.run_id)  # still finishing its pause: use the store
            self._record = claim(self._record)
            self._entry = self._result.checkpoint.resume_at
            self._status = self._record.status
            self._resumed = True
            self._segment += 1
            self._future = None
            self._actor = None

    # --- called from the RunActor's thread --------------------------------------------

    def _set_status(self, status: str) -> None:
        self._status = status

    def _committed(self, record: RunRecord) -> None:
        with self._lock:
            self._record = record
            self._status = record.status

    def _ended(
        self,
        result: RunResult | None,
        error: BaseException | None,
        pause: Any,
        record: RunRecord,
    ) -> None:
        with self._lock:
            future = self._future
            if self._status == lifecycle.ABORTED and result is not None:
                result = replace(result, status=self._status)  # aborted while pausing
            self._result = result
            if record.version >= self._record.version:
                self._record = record
        if self._registry is not None and self._registry._ended(self, result, pause, error):
            return  # the registry restarts the run: the future waits for the next segment
        self._resolve(future, result, error)

    def _resolve(
        self,
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

    # --- the registry's supervision ---------------------------------------------------

    def _restart(self, record: RunRecord) -> None:
        """Run another segment from `record.stage` (claimed by the registry), same future."""
        with self._lock:
            self._record = record
            self._status = record.status
            self._entry = str(record.stage)
            self._resumed = True
            self._segment += 1
            self._result = None
            self._actor = actor = RunActor.start(self._deps, record)
        actor.tell(Begin(self._entry, resumed=True))

    def _give_up(self, error: BaseException | None = None) -> None:
        """End the future with the last result (or `error`): the registry will not restart."""
        with self._lock:
            future, result = self._future, self._result
        self._resolve(future, result, error if result is None else None)
