"""The `ctx` a step receives, and the job that runs one step attempt on a worker."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from stageline.core.events import PathNode
from stageline.core.patch import check_patch, copy_state

from .logs import library_logger
from .messages import StepDone


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
        self.aborted = threading.Event()
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


def step_job(
    token: int,
    action: Callable[..., Any],
    state: dict[str, Any],
    ctx: StepContext,
    where: str,
    reply: Callable[[StepDone], None],
) -> Callable[[], None]:
    """A worker job: copy the stage-start state, run the action, check and reply."""

    def job() -> None:
        started = time.perf_counter()
        try:
            patch = check_patch(action(copy_state(state), ctx), where)
        except BaseException as exc:  # KeyboardInterrupt / SystemExit fail the step only
            reply(_failed(token, exc, started))
            return
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
        patch = check_patch(await action(copy_state(state), ctx), where)
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
