"""The `ctx` a step receives, and the job that runs one step attempt on a worker."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from stageline.core.errors import StepError
from stageline.core.events import PathNode
from stageline.core.patch import check_patch, copy_state

from .logs import library_logger
from .messages import StepDone


class NotStarted(StepError):  # type: ignore[misc]
    """A step signalled (sibling failed, timeout, abort) before a worker picked it up."""


class AbortFlag:
    """An Event-like flag a step polls (`is_set()`) or waits on (`wait(timeout)`).

    Cheaper than a threading.Event for the common case where nobody waits: the Event
    is made only when a step first calls `wait`.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    __bool__ = is_set

    def set(self) -> None:
        self._set = True
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or `timeout` seconds pass; return whether it is set."""
        if self._event is None:
            self._event = threading.Event()
        if self._set:  # checked after the Event exists, so a concurrent set() is never lost
            self._event.set()
        return self._event.wait(timeout)


class StepContext:
    """What a step knows about where it runs; `aborted` is set when it should stop."""

    __slots__ = (
        "_log",
        "_logger",
        "aborted",
        "artifacts",
        "attempt",
        "deadline",
        "path",
        "pipeline_id",
        "run_id",
        "stage_id",
        "step_id",
    )

    def __init__(
        self,
        *,
        run_id: str,
        pipeline_id: str,
        stage_id: str,
        step_id: str,
        attempt: int,
        path: tuple[PathNode, ...],
        deadline: float | None,
        artifacts: Any = None,
        logger: Any = None,
    ) -> None:
        self.run_id = run_id
        self.pipeline_id = pipeline_id
        self.stage_id = stage_id
        self.step_id = step_id
        self.attempt = attempt
        self.path = path
        self.deadline = deadline
        self.artifacts = artifacts
        self.aborted = AbortFlag()
        self._logger = logger
        self._log: Any = None

    @property
    def log(self) -> Any:
        """A structlog logger bound with run, pipeline, stage, step and attempt."""
        if self._log is None:
            self._log = library_logger(
                self._logger,
                run_id=self.run_id,
                pipeline_id=self.pipeline_id,
                stage_id=self.stage_id,
                step_id=self.step_id,
                attempt=self.attempt,
            )
        return self._log

    def __repr__(self) -> str:
        return (
            f"StepContext(run_id={self.run_id!r}, stage_id={self.stage_id!r}, "
            f"step_id={self.step_id!r}, attempt={self.attempt})"
        )


class Ticket:
    """Links a queued or running sync step to the pool, so an abandoned one can be let go.

    When the run stops waiting for a step (timeout, abort), `abandon` lets the pool add a
    thread for as long as the step still occupies one; a step abandoned before it started
    never runs at all.
    """

    __slots__ = ("_done", "_lock", "_release")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._release: Callable[[], None] | None = None

    def abandon(self, workers: Any) -> None:
        with self._lock:
            if not self._done and self._release is None:
                self._release = workers.abandon()

    def finish(self) -> None:
        with self._lock:
            self._done = True
            release = self._release
        if release is not None:
            release()


def step_job(
    token: int,
    action: Callable[..., Any],
    state: dict[str, Any],
    ctx: StepContext,
    where: str,
    reply: Callable[[StepDone], None],
    ticket: Ticket,
) -> Callable[[], None]:
    """A worker job: copy the stage-start state, run the action, check and reply."""

    def job() -> None:
        if ctx.aborted.is_set():  # signalled while queued: never start it
            ticket.finish()
            reply(StepDone(token, error=NotStarted("not started"), duration=0.0))
            return
        started = time.perf_counter()
        try:
            # copied: a step may keep (and later mutate) what it returned
            patch = copy_state(check_patch(action(copy_state(state), ctx), where))
        except BaseException as exc:  # KeyboardInterrupt / SystemExit fail the step only
            ticket.finish()
            reply(_failed(token, exc, started))
            return
        ticket.finish()
        reply(StepDone(token, patch=patch, duration=time.perf_counter() - started))

    return job


async def async_step(
    token: int,
    action: Callable[..., Any],
    state: dict[str, Any],
    ctx: StepContext,
    where: str,
) -> StepDone:
    """The async counterpart of `step_job`, run on the runtime's event loop."""
    started = time.perf_counter()
    try:
        patch = copy_state(check_patch(await action(copy_state(state), ctx), where))
    except BaseException as exc:
        return _failed(token, exc, started)
    return StepDone(token, patch=patch, duration=time.perf_counter() - started)


def _failed(token: int, exc: BaseException, started: float) -> StepDone:
    return StepDone(
        token,
        error=exc,
        traceback="".join(traceback.format_exception(exc)),
        duration=time.perf_counter() - started,
    )
