"""Attached RunContexts: a context on a stored run that some other context or process drives.

`factory.prepare(run_id=..., if_exists="attach")` calls `attach` when the run already
exists. If this process's registry drives the run, its own RunContext comes back; else a
RunContext over an AttachedRun, which starts nothing: its `wait()` reads the run's row
(`store.get_run`) with a short backoff until the run stops (`lifecycle.STOPPED`:
succeeded, failed, aborted, expired, paused or quarantined) and rebuilds the RunResult from
the row. A failed run counts as stopped, as in `stageline wait`, though a supervising
registry may still restart it.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stageline.core import lifecycle
from stageline.core.errors import RunExistsError, RunNotFound, RunStateError, error_from_record
from stageline.core.events import Event
from stageline.core.results import RunResult
from stageline.core.store import RunInfo, Store
from stageline.core.supervision import attempt_errors

from .context import RunContext
from .handle import RunHandle

if TYPE_CHECKING:
    from .supervisor import Supervisor

FIRST_POLL = 0.005
"""Seconds before the second read of the run's row; each wait doubles, up to LAST_POLL."""
LAST_POLL = 0.2


def attach(
    store: Store,
    run_id: str,
    pipeline_id: str,
    supervisor: Supervisor | None,
    abort: Callable[[str, str | None], None],
) -> RunContext | None:
    """A RunContext on the stored run `run_id` of `pipeline_id`; None if there is none.

    The run's own context when `supervisor` (the factory's registry) drives it; else one
    over an AttachedRun, aborted through `abort(run_id, reason)`. RunExistsError if the
    stored run belongs to another pipeline.
    """
    try:
        info = store.get_run(run_id)
    except RunNotFound:
        return None
    if info.pipeline_id != pipeline_id:
        raise RunExistsError(
            f"run {run_id!r} already exists as a run of pipeline {info.pipeline_id!r}, not "
            f"of {pipeline_id!r}; attach to it with that pipeline's factory, or choose "
            "another run_id"
        )
    live = _driven_here(supervisor, run_id, info.owner)
    if live is not None and _was_started(live.context):
        context: RunContext = live.context
        return context
    # Not driven here, or prepared here but not started yet: watch it through the store.
    return RunContext(AttachedRun(store, run_id, abort), run_id, pipeline_id)


def _driven_here(supervisor: Supervisor | None, run_id: str, owner: str | None) -> RunHandle | None:
    """The live run if `supervisor` holds it (or is about to: the run has its lease, the
    notice of it still on the way to the registry's actor)."""
    if supervisor is None:
        return None
    live = supervisor.lookup(run_id)
    if live is None and owner == supervisor.config.owner:
        supervisor.settle()
        live = supervisor.lookup(run_id)
    return live


def _was_started(context: RunContext) -> bool:
    """Whether a live run's context was started (its wait() has a future to wait on)."""
    try:
        context.wait(0)
    except RunStateError:
        return False  # never started (or stopped with its registry): the store tells
    except Exception:
        return True  # going (TimeoutError), or ended with an error its future holds
    return True


class AttachedRun:
    """The `ContextRun` of a run that some other context drives (see the module)."""

    def __init__(self, store: Store, run_id: str, abort: Callable[[str, str | None], None]) -> None:
        self.store = store
        self.run_id = run_id
        self._abort = abort

    @property
    def status(self) -> str:
        """The run's status as stored now."""
        return str(self.store.get_run(self.run_id).status)

    @property
    def result(self) -> RunResult | None:
        """The run's RunResult if it has stopped, else None (read from the store now)."""
        info = self.store.get_run(self.run_id)
        return result_of(info) if info.status in lifecycle.STOPPED else None

    def subscribe(self, name: str, handler: Callable[[Event], Any]) -> Callable[[], None]:
        raise RunStateError(
            f"run {self.run_id!r} is attached (driven by another context or process): "
            "on() is not available here; read its journal with store.read_events(run_id) "
            "or `stageline logs RUN --follow`"
        )

    def start(self) -> concurrent.futures.Future[RunResult]:
        raise RunStateError(
            f"run {self.run_id!r} already exists and is started (or prepared) elsewhere; "
            "this context is attached to it: call wait() for its result"
        )

    def wait(self, timeout: float | None = None) -> RunResult:
        # Real time, as RunContext.wait's future: the run goes on in other processes,
        # whatever clock this factory's runs use.
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = FIRST_POLL
        while True:
            info = self.store.get_run(self.run_id)
            if info.status in lifecycle.STOPPED:
                return result_of(info)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"run {self.run_id!r} did not stop within {timeout}s; it goes on "
                    f"(status {info.status!r}): wait() for it again, or abort it"
                )
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, LAST_POLL)

    def abort(self, reason: str | None = None) -> None:
        self._abort(self.run_id, reason)


def result_of(info: RunInfo) -> RunResult:
    """The RunResult of a stopped run, as its stored row tells it."""
    error = None
    if info.error is not None and info.status != lifecycle.SUCCEEDED:
        error = error_from_record(info.error)
    failed = info.status == lifecycle.FAILED and error is not None
    return RunResult(
        info.run_id,
        info.pipeline_id,
        info.status,
        info.state,
        checkpoint=info.checkpoint if info.status == lifecycle.PAUSED else None,
        error=error,
        attempts=attempt_errors(info.error, error) if failed else (),
    )
