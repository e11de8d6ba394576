"""RunContext: the handle a user holds on one run (subscribe, run, start, abort).

A thin face: the run itself (its actor, future and segment) is a LiveRun
(actors/live_run.py), which the registry and the factory talk to. RunContext knows it
only through the `ContextRun` protocol below.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any, Protocol

from stageline.core.events import Event
from stageline.core.results import RunResult

__all__ = ["RunContext", "RunResult"]


class ContextRun(Protocol):
    """What a RunContext asks of the live run behind it."""

    @property
    def status(self) -> str: ...

    @property
    def result(self) -> RunResult | None: ...

    def subscribe(self, name: str, handler: Callable[[Event], Any]) -> Callable[[], None]: ...

    def start(self) -> concurrent.futures.Future[RunResult]: ...

    def wait(self, timeout: float | None = None) -> RunResult: ...

    def abort(self, reason: str | None = None) -> None: ...


class RunContext:
    """One run, prepared or resumed by a PipelineFactory.

    `run()` blocks until the run ends (or pauses) and returns a RunResult; `start()`
    returns a `concurrent.futures.Future` of it; `await run_async()` is the asyncio form.
    A context runs once per segment: after a pause, `factory.resume(run_id)` re-arms the
    same context (the registry's fast path) or builds a new one. `run(timeout=...)` that
    times out raises TimeoutError and leaves the run going.
    """

    def __init__(self, run: ContextRun, run_id: str, pipeline_id: str) -> None:
        self._run = run
        self.run_id = run_id
        self.pipeline_id = pipeline_id

    def __repr__(self) -> str:
        return (
            f"RunContext(run_id={self.run_id!r}, pipeline_id={self.pipeline_id!r}, "
            f"status={self.status!r})"
        )

    @property
    def status(self) -> str:
        """The run's status as this process last saw it."""
        return self._run.status

    @property
    def result(self) -> RunResult | None:
        """The last RunResult of this context (None while it has not ended or paused)."""
        return self._run.result

    def on(self, name: str, handler: Callable[[Event], Any]) -> Callable[[], None]:
        """Call `handler(event)` for each event named `name` ("*" for all); returns unsubscribe."""
        return self._run.subscribe(name, handler)

    def start(self) -> concurrent.futures.Future[RunResult]:
        """Start the run in the background; the future resolves to its RunResult."""
        return self._run.start()

    def run(self, timeout: float | None = None) -> RunResult:
        """Run to the end (or to a pause) and return the result."""
        self.start()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> RunResult:
        """Wait for a run already started (by `start()`, `registry.retry`, `recover`) to end.

        With a supervising registry that includes its restarts. TimeoutError if it has not
        ended within `timeout`; RunStateError if the run was never started.
        """
        return self._run.wait(timeout)

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
        self._run.abort(reason)
