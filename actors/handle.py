"""The narrow handles between a run, its registry and its factory (protocols only).

`RunHandle` is what the registry and the factory may do to a live run (claim a resume,
restart, give up, drain, force stop, export its artifacts); `actors/live_run.py`
implements it. `SupervisorLink` is what a live run may tell its registry; the registry's
`Supervisor` (actors/supervisor.py) implements it. Neither side reaches into the other's
private state.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Protocol

from stageline.core.definition import Pipeline
from stageline.core.results import RunResult
from stageline.core.store import RunRecord, Store


class RunHandle(Protocol):
    """One live run, as its registry and factory see it."""

    @property
    def run_id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def record(self) -> RunRecord:
        """The run as this process last committed (or claimed) it."""
        ...

    @property
    def store(self) -> Store: ...

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def segment(self) -> int:
        """Which segment of the run this handle drives; +1 per resume or restart."""
        ...

    @property
    def lock(self) -> threading.Lock:
        """Held while the run changes segment (a claim): check `segment` under it."""
        ...

    @property
    def context(self) -> Any:
        """The public RunContext of this run."""
        ...

    def claim_resume(self, claim: Callable[[RunRecord], RunRecord]) -> None:
        """Re-arm this paused run for another segment; `claim` does the store's CAS."""

    def restart(self, record: RunRecord) -> None:
        """Run another segment from `record.stage` (claimed already), same future."""

    def give_up(self, error: BaseException | None = None) -> None:
        """End the run's future: its registry will not restart it."""

    def committed(self, record: RunRecord) -> None:
        """The registry committed `record` for this run (a crash recorded as failed)."""

    def set_status(self, status: str) -> None: ...

    def abort_running(self, reason: str | None) -> None:
        """Abort the run if its actor is running it (never waits on the registry)."""

    def drain(self) -> concurrent.futures.Future[RunResult] | None:
        """Ask a running run to stop after its current stage commits."""
        ...

    def force_stop(self) -> None:
        """Stop the run's actors now; the store keeps its last commit (like a crash)."""

    def start(self) -> concurrent.futures.Future[RunResult]:
        """Start the run's segment (the registry's retry and recovery do)."""
        ...

    def export(self, max_bytes: int) -> bool:
        """Write a paused run's artifacts into its checkpoint; False if it is not paused.

        The caller holds `lock`, so no resume claims the run meanwhile."""
        ...


class FactoryLink(Protocol):
    """A PipelineFactory, as its registry sees it (to retry and recover its runs)."""

    pipeline: Pipeline
    store: Store | None
    max_bundle_bytes: int

    def store_for(self, run_id: str) -> Store:
        """The store that holds `run_id`."""
        ...

    def live_run(
        self, store: Store, record: RunRecord, entry: str, container: Any, *, resumed: bool = False
    ) -> RunHandle:
        """The live run of `record` in the factory's process."""
        ...

    def waking_state(self, record: RunRecord, checkpoint: Any, entry: str) -> Any:
        """The (migrated) state a run the registry wakes goes on with; None: as stored."""
        ...


class SupervisorLink(Protocol):
    """What a live run tells the registry that holds it."""

    @property
    def stopped(self) -> bool: ...

    def track(self, run: RunHandle) -> None:
        """The run starts a segment: hold it (and renew its lease)."""

    def queue(self, run: RunHandle) -> None:
        """The run is queued (its limits did not admit it): hold it until a slot frees."""

    def lease(self) -> Any:
        """The lease a commit that takes a run for this registry carries."""

    def ended(
        self, run: RunHandle, result: RunResult | None, pause: Any, error: BaseException | None
    ) -> bool:
        """A segment ended; True if the registry will restart the run."""
        ...

    def cancel_restart(self, run_id: str) -> None:
        """A failed run waiting for its restart was aborted: it stays failed."""
