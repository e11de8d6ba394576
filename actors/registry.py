"""The Registry: a supervisor actor holding every live run of a process.

It keeps a strong reference to each live RunContext. When a run pauses it arms a timer
message for the pause's window; if the run is not resumed by then, it exports the run's
artifacts into the checkpoint (`write_checkpoint`) and drops the reference, after which
only the store holds the run. While the window is open, `factory.resume(run_id)` returns
the same RunContext: no store read, no decoding.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from stageline.core import lifecycle
from stageline.core.checkpoint import checkpoint_from_bytes, write_checkpoint
from stageline.core.clock import Clock, SystemClock
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.errors import RunNotPaused, StagelineError
from stageline.core.results import RunResult
from stageline.core.store import Store, commit_from

from .base import StagelineActor
from .runtime import Runtime
from .timers import TimerHandle, TimerService
from .workers import shared_workers

if TYPE_CHECKING:
    from .context import RunContext

_log = logging.getLogger("stageline")


@dataclass(frozen=True, slots=True)
class _Track:
    context: RunContext


@dataclass(frozen=True, slots=True)
class _Ended:
    context: RunContext
    result: RunResult | None
    pause_timeout: float | None


@dataclass(frozen=True, slots=True)
class _PauseExpired:
    run_id: str
    token: int


@dataclass(frozen=True, slots=True)
class _TtlExpired:
    run_id: str
    store: Store
    version: int


@dataclass(frozen=True, slots=True)
class _Forget:
    run_id: str


class _LiveRuns:
    pass


class _Stats:
    pass


class _ExportAll:
    pass


class RegistryActor(StagelineActor):
    """Owns the live runs, their pause windows and the checkpoint TTL timers."""

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry
        # Written only by this actor; other threads may read it (the fast-path lookup).
        self.live: dict[str, RunContext] = registry._live
        self.windows: dict[str, tuple[int, TimerHandle | None]] = {}
        self.next_token = 0
        self.counts = {"paused": 0, "exported": 0, "expired": 0, "ended": 0}

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except Exception:  # a registry never stops over one run's problem
            _log.exception("stageline registry: handling %r failed", type(message).__name__)
            return None

    def _handle(self, message: Any) -> Any:
        if isinstance(message, _Track):
            self._cancel_window(message.context.run_id)
            self.live[message.context.run_id] = message.context
        elif isinstance(message, _Ended):
            self._on_ended(message)
        elif isinstance(message, _PauseExpired):
            self._on_pause_expired(message)
        elif isinstance(message, _TtlExpired):
            self._on_ttl_expired(message)
        elif isinstance(message, _Forget):
            self._cancel_window(message.run_id)
            self.live.pop(message.run_id, None)
        elif isinstance(message, _LiveRuns):
            return list(self.live.values())
        elif isinstance(message, _Stats):
            return self._stats()
        elif isinstance(message, _ExportAll):
            for run_id in [r for r, c in self.live.items() if c.status == lifecycle.PAUSED]:
                self._export_safely(run_id)
        return None

    def _on_ended(self, message: _Ended) -> None:
        context = message.context
        if context.status != lifecycle.PAUSED:
            self.counts["ended"] += 1
            self._cancel_window(context.run_id)
            self.live.pop(context.run_id, None)
            return
        self.counts["paused"] += 1
        self.live[context.run_id] = context
        timeout = message.pause_timeout
        if timeout is None:
            timeout = self.registry.default_pause_timeout
        self._arm_window(context.run_id, timeout)
        self._arm_ttl(context)

    def _arm_window(self, run_id: str, timeout: float) -> None:
        self._cancel_window(run_id)
        self.next_token += 1
        token = self.next_token
        if timeout <= 0:
            self.windows[run_id] = (token, None)
            self._export_safely(run_id)
            return
        message = _PauseExpired(run_id, token)
        handle = self.registry._timers.schedule(timeout, lambda: self._tell(message))
        self.windows[run_id] = (token, handle)

    def _arm_ttl(self, context: RunContext) -> None:
        ttl = self.registry.checkpoint_ttl
        if ttl is None:
            return
        record = context._record
        message = _TtlExpired(context.run_id, context._deps.store, record.version)
        self.registry._timers.schedule(ttl, lambda: self._tell(message))

    def _cancel_window(self, run_id: str) -> None:
        window = self.windows.pop(run_id, None)
        if window is not None and window[1] is not None:
            window[1].cancel()

    def _tell(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass

    def _on_pause_expired(self, message: _PauseExpired) -> None:
        window = self.windows.get(message.run_id)
        if window is None or window[0] != message.token:
            return  # resumed or re-paused since
        self._export_safely(message.run_id)

    def _export_safely(self, run_id: str) -> None:
        """Export one run; if its bundle cannot be made, say so and let the run go anyway.

        The checkpoint (without artifacts) stays, so the run can still be resumed; only
        artifacts over `max_bundle_bytes` (or unencodable) are lost, and the log says so.
        """
        try:
            self._export(run_id)
        except Exception:
            _log.exception(
                "stageline registry: exporting the artifacts of paused run %r failed; the run "
                "stays resumable from its checkpoint without them",
                run_id,
            )
            self.windows.pop(run_id, None)
            self.live.pop(run_id, None)

    def _export(self, run_id: str) -> None:
        """Write the run's bundle into its checkpoint, then let go of the run."""
        self.windows.pop(run_id, None)
        context = self.live.get(run_id)
        if context is None:
            return
        with context._lock:
            if context.status != lifecycle.PAUSED or context._record.checkpoint is None:
                return  # resumed meanwhile: it is live again
            checkpoint = checkpoint_from_bytes(context._record.checkpoint, run_id)
            bundle = context._container.export_bundle(self.registry.max_bundle_bytes)
            try:
                write_checkpoint(
                    context._deps.store,
                    checkpoint.with_bundle(bundle),
                    expected_version=context._record.version,
                )
            except RunNotPaused:
                pass  # resumed elsewhere since (maybe paused again): our copy is stale
            self.live.pop(run_id, None)
        self.counts["exported"] += 1

    def _on_ttl_expired(self, message: _TtlExpired) -> None:
        store = message.store
        record = store.load_run(message.run_id)
        if record.status != lifecycle.PAUSED or record.version != message.version:
            return
        store.commit(commit_from(record, "expire", self.registry.clock.wall(), checkpoint=None))
        self.counts["expired"] += 1
        context = self.live.pop(message.run_id, None)
        self._cancel_window(message.run_id)
        if context is not None:
            context._set_status(lifecycle.EXPIRED)

    def _stats(self) -> dict[str, int]:
        statuses = [c.status for c in self.live.values()]
        return {
            "live": len(self.live),
            "running": statuses.count(lifecycle.RUNNING) + statuses.count(lifecycle.PENDING),
            "paused_live": statuses.count(lifecycle.PAUSED),
            "pause_windows": len(self.windows),
            **self.counts,
        }


class Registry:
    """A supervisor for the runs of one process (one per daemon); a context manager.

    `default_pause_timeout`: seconds a paused run stays live when its Pause gave no
    timeout. `checkpoint_ttl`: when set, a run paused longer (while this registry runs)
    is marked "expired" and its checkpoint cleared. `clock`: time for every timer (use a
    ManualClock in tests). `max_bundle_bytes`: the largest artifact bundle exported.
    """

    def __init__(
        self,
        *,
        default_pause_timeout: float = 300.0,
        checkpoint_ttl: float | None = None,
        supervision: Any = None,
        clock: Clock | None = None,
        max_bundle_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if default_pause_timeout < 0:
            raise StagelineError(f"default_pause_timeout must be >= 0, got {default_pause_timeout}")
        if checkpoint_ttl is not None and checkpoint_ttl <= 0:
            raise StagelineError(f"checkpoint_ttl must be None or > 0, got {checkpoint_ttl}")
        self.default_pause_timeout = default_pause_timeout
        self.checkpoint_ttl = checkpoint_ttl
        self.supervision = supervision
        self.clock: Clock = clock or SystemClock()
        self.max_bundle_bytes = max_bundle_bytes
        self._live: dict[str, RunContext] = {}
        self._fast_resumes = 0
        self._timers = TimerService(self.clock)
        self._runtime = Runtime(self.clock, self._timers, shared_workers())
        self._actor = RegistryActor.start(self)
        self._stopped = False

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def live_runs(self) -> list[RunContext]:
        """Every RunContext this registry holds: running, or paused within its window."""
        runs: Any = self._actor.ask(_LiveRuns())
        return list(runs)

    def stats(self) -> dict[str, int]:
        """Counts: live, running, paused_live, pause_windows, paused, exported, expired..."""
        stats: Any = self._actor.ask(_Stats())
        return {**stats, "resumed_fast": self._fast_resumes}

    def stop(self, timeout: float | None = 10.0) -> None:
        """Shut down gracefully: no run is lost, no thread of this registry is left.

        Running runs finish and commit their current stage, then stop where they are
        ("running" in the store, resumable by `recover`); runs still busy when `timeout`
        passes are stopped at their last commit, as a crash would. Every live paused
        run's artifacts are exported into its checkpoint. Then the registry's actor and
        timer thread stop.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = None if timeout is None else time.monotonic() + timeout
        live = self.live_runs()
        draining = [f for f in (c._drain() for c in live) if f is not None]
        concurrent.futures.wait(draining, timeout=_remaining(deadline))
        try:  # exporting is never skipped for lack of time: it is what keeps artifacts
            self._actor.ask(_ExportAll(), timeout=max(_remaining(deadline) or 0.0, 30.0))
        except pykka.Timeout:
            _log.error("stageline registry: exporting paused runs did not finish in time")
        for context in live:
            if context.status in (lifecycle.RUNNING, lifecycle.PENDING):
                context._force_stop()
        try:
            self._actor.stop(timeout=5.0)
        except pykka.Timeout:
            _log.error("stageline registry: its actor did not stop in time")
        self._timers.stop()

    # --- used by RunContext and PipelineFactory ---------------------------------------

    def _track(self, context: RunContext) -> None:
        self._actor.tell(_Track(context))

    def _ended(self, context: RunContext, result: RunResult | None, pause: Any) -> None:
        timeout = getattr(pause, "timeout", None)
        message = _Ended(context, result, timeout)
        try:
            if context.status == lifecycle.PAUSED:
                # an ask: when run() returns "paused", the pause window is already armed
                self._actor.ask(message, timeout=30)
            else:
                self._actor.tell(message)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass

    def _forget(self, run_id: str) -> None:
        """Drop a live copy found stale (the store moved on without this process)."""
        self._actor.tell(_Forget(run_id))

    def _resumed_fast(self) -> None:
        self._fast_resumes += 1  # a statistic: a lost increment under a race is harmless

    def _lookup(self, run_id: str) -> RunContext | None:
        """The live context of a run, if this registry holds it (a plain dict read)."""
        if self._stopped:
            return None
        return self._live.get(run_id)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
