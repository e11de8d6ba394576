"""The Registry: a supervisor actor holding every live run of a process.

It keeps a strong reference to each live RunContext. When a run pauses it arms a timer
message for the pause's window; if the run is not resumed by then, it exports the run's
artifacts into the checkpoint (`write_checkpoint`) and drops the reference, after which
only the store holds the run. While the window is open, `factory.resume(run_id)` returns
the same RunContext: no store read, no decoding.

Supervision (docs/supervision.md): with a RetryPolicy, a failed run is restarted from its
failed stage by a timer message after the policy's backoff; a run whose actor died of a
runtime bug is recorded failed and restarted the same way (with the default policy when
none is given). The registry owns its running runs through leases in their stores and
renews them with a timer; `recover(factory)` takes over runs whose owner is gone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pykka

from stageline.core import events as ev
from stageline.core import lifecycle
from stageline.core.checkpoint import checkpoint_from_bytes, decode_bundle, write_checkpoint
from stageline.core.clock import Clock, SystemClock
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.errors import (
    ConflictError,
    RunNotFound,
    RunNotPaused,
    RunStateError,
    StagelineError,
    StoreError,
    error_to_record,
)
from stageline.core.events import Event, PathNode
from stageline.core.patch import public_state
from stageline.core.results import RunResult
from stageline.core.store import RunInfo, RunRecord, Store, commit_from
from stageline.core.supervision import (
    RetryPolicy,
    is_orphaned,
    restart_commit,
    restarts,
    with_attempts,
)

from .base import StagelineActor
from .carriers import shared_carriers
from .container import Container
from .runtime import Runtime
from .timers import TimerHandle, TimerService
from .workers import shared_workers

if TYPE_CHECKING:
    from .context import RunContext
    from .factory import PipelineFactory

_log = logging.getLogger("stageline")

EXPORT_RETRY = 5.0
"""Seconds before a paused run's export is tried again after the store refused it."""


@dataclass(frozen=True, slots=True)
class _Track:
    context: RunContext


@dataclass(frozen=True, slots=True)
class _Ended:
    context: RunContext
    result: RunResult | None
    pause_timeout: float | None
    error: BaseException | None = None
    segment: int = 0


@dataclass(frozen=True, slots=True)
class _RestartDue:
    run_id: str
    token: int


@dataclass(frozen=True, slots=True)
class _RetryNow:
    run_id: str


@dataclass(frozen=True, slots=True)
class _CancelRestart:
    run_id: str


class _Renew:
    pass


class _GiveUpAll:
    pass


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
    context: RunContext
    segment: int


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
        # Also written only here; a fast-path resume reads it to cancel the run's timer.
        self.windows: dict[str, tuple[int, TimerHandle | None]] = registry._windows
        self.next_token = 0
        self.counts = {
            "paused": 0, "exported": 0, "expired": 0, "ended": 0,
            "failed": 0, "restarts": 0, "crashed": 0, "recovered": 0,
        }  # fmt: skip
        # Failed runs waiting for their restart: run_id -> (token, timer, error if crashed)
        self.retries: dict[str, tuple[int, TimerHandle, BaseException | None]] = {}
        self.renewing = False

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except Exception:  # a registry never stops over one run's problem
            _log.exception("stageline registry: handling %r failed", type(message).__name__)
            return None
        finally:
            with self.registry._changed:  # for stageline.testing.wait_for_stats
                self.registry._generation += 1
                self.registry._changed.notify_all()

    def _handle(self, message: Any) -> Any:
        if isinstance(message, _Track):
            self._cancel_window(message.context.run_id)
            self.live[message.context.run_id] = message.context
            self._arm_renewal()
        elif isinstance(message, _Ended):
            return self._on_ended(message)
        elif isinstance(message, _RestartDue):
            self._on_restart_due(message)
        elif isinstance(message, _RetryNow):
            return self._retry_now(message.run_id)
        elif isinstance(message, _CancelRestart):
            self._cancel_restart(message.run_id)
        elif isinstance(message, _Renew):
            self._renew()
        elif isinstance(message, _GiveUpAll):
            self._give_up_all()
        elif isinstance(message, _Counted):
            self.counts[message.name] += message.n
        elif isinstance(message, _PauseExpired):
            self._on_pause_expired(message)
        elif isinstance(message, _TtlExpired):
            self._on_ttl_expired(message)
        elif isinstance(message, _Forget):
            self._forget(message)
        elif isinstance(message, _LiveRuns):
            return list(self.live.values())
        elif isinstance(message, _Stats):
            return self._stats()
        elif isinstance(message, _ExportAll):
            for run_id in [r for r, c in self.live.items() if c.status == lifecycle.PAUSED]:
                self._export_safely(run_id)
        return None

    def _on_ended(self, message: _Ended) -> bool:
        """Returns True when the registry will restart the run (its future waits)."""
        context = message.context
        with context._lock:
            if message.segment != context._segment:
                return False  # late news (its ask timed out): the run was resumed since
        if message.error is not None:
            return self._on_crash(context, message.error)
        if context.status == lifecycle.FAILED:
            return self._on_failed(context, None)
        if context.status != lifecycle.PAUSED:
            self._drop(context)
            return False
        self.counts["paused"] += 1
        self.live[context.run_id] = context
        timeout = message.pause_timeout
        if timeout is None:
            timeout = self.registry.default_pause_timeout
        self._arm_window(context.run_id, timeout)
        self._arm_ttl(context)
        return False

    def _release_lease(self, context: RunContext) -> None:
        """Let `recover` (here or elsewhere) take a run whose store failed at once,
        rather than when its lease runs out. Best effort: the store may still be down."""
        try:
            context._deps.store.renew_leases(self.registry.owner, [context.run_id], 0.0)
        except Exception:
            _log.warning(
                "stageline registry: could not release the lease of run %r; it can be "
                "recovered once its lease runs out",
                context.run_id,
            )

    def _forget(self, message: _Forget) -> None:
        """Let go of a live copy found stale, unless it was resumed since (then it runs).

        Checked under the context's lock, which the fast path's claim holds: either this
        comes first, and the resumed run is tracked again by `Registry._track`, or the
        claim does, and the copy is not stale any more.
        """
        context = message.context
        with context._lock:
            if self.live.get(context.run_id) is context and context._segment == message.segment:
                self._cancel_window(context.run_id)
                self.live.pop(context.run_id, None)

    def _drop(self, context: RunContext) -> None:
        self.counts["ended"] += 1
        self._cancel_window(context.run_id)
        self.live.pop(context.run_id, None)

    # --- supervision ------------------------------------------------------------------

    def _on_failed(self, context: RunContext, crash: BaseException | None) -> bool:
        """A run ended failed: arm its restart if the policy says so, else let it go."""
        policy = self.registry.supervision
        record = context._record
        if crash is not None:  # a runtime bug is always recovered, within the restart budget
            policy = policy or RetryPolicy()
            restart = restarts(record.state) + 1
            delay = policy.delay(restart) if restart <= policy.max_restarts else None
        else:
            delay = None if policy is None else policy.next_delay(record)
        if delay is None or self.registry._stopped:
            self.counts["failed"] += 1
            self._drop(context)
            return False
        self.next_token += 1
        message = _RestartDue(context.run_id, self.next_token)
        handle = self.registry._timers.schedule(delay, lambda: self._tell(message))
        self.retries[context.run_id] = (self.next_token, handle, crash)
        _log.warning(
            "stageline registry: run %r failed at stage %r; restart %d in %ss",
            context.run_id, record.stage, restarts(record.state) + 1, delay,
        )  # fmt: skip
        return True

    def _on_crash(self, context: RunContext, error: BaseException) -> bool:
        """The run's actor died. A runtime bug: record the run failed, then supervise it.

        Store errors are not recovered here (the store is what failed; a conflict means
        another process drives the run): the run stays at its last commit, and once its
        lease runs out `recover` on any registry takes it over.
        """
        record = context._record
        if isinstance(error, StoreError) or record.status != lifecycle.RUNNING:
            self._drop(context)
            if isinstance(error, StoreError) and not isinstance(error, ConflictError):
                self._release_lease(context)
            return False
        now = self.registry.clock.wall()
        event = Event(  # the very failure event the actor emitted (its seq is last_seq)
            name=ev.PIPELINE_FAILURE,
            run_id=record.run_id,
            path=(PathNode(record.pipeline_id, None),),
            seq=record.last_seq,
            ts=now,
            pipeline_id=record.pipeline_id,
            error=error,
            state=public_state(record.state),
        )
        commit = commit_from(
            record, "fail", now, events=(event,), checkpoint=None,
            error=with_attempts(error_to_record(error), record.state),
        )  # fmt: skip
        try:
            failed = record.applied(commit, context._deps.store.commit(commit))
        except Exception:
            _log.exception(
                "stageline registry: recording the crash of run %r failed; it stays at its "
                "last commit for recover()",
                record.run_id,
            )
            self._drop(context)
            return False
        self.counts["crashed"] += 1
        context._committed(failed)
        return self._on_failed(context, error)

    def _on_restart_due(self, message: _RestartDue) -> None:
        waiting = self.retries.get(message.run_id)
        if waiting is None or waiting[0] != message.token:
            return  # retried by hand, or given up, since
        del self.retries[message.run_id]
        context = self.live.get(message.run_id)
        if context is not None:
            self._restart(context, waiting[2])

    def _retry_now(self, run_id: str) -> RunContext | None:
        """registry.retry of a run waiting for its restart: restart it now."""
        waiting = self.retries.pop(run_id, None)
        context = self.live.get(run_id)
        if waiting is None or context is None:
            return None
        waiting[1].cancel()
        return context if self._restart(context, waiting[2]) else None

    def _restart(self, context: RunContext, crash: BaseException | None) -> bool:
        """failed -> running in one compare-and-set, then a new segment on the same context."""
        record = context._record
        commit = restart_commit(
            record, "retry", self.registry.clock.wall(), pipeline_id=record.pipeline_id,
            **self.registry._lease(),
        )  # fmt: skip
        try:
            claimed = record.applied(commit, context._deps.store.commit(commit))
        except Exception as exc:
            if not isinstance(exc, ConflictError):
                _log.exception("stageline registry: restarting run %r failed", record.run_id)
            # else another process retried it first: it drives the run now
            self.counts["failed"] += 1
            self._drop(context)
            context._give_up(crash)
            return False
        self.counts["restarts"] += 1
        context._restart(claimed)
        return True

    def _cancel_restart(self, run_id: str) -> None:
        """Do not restart this run after all: it stays failed (retry it by hand later)."""
        waiting = self.retries.pop(run_id, None)
        if waiting is None:
            return
        waiting[1].cancel()
        context = self.live.get(run_id)
        if context is not None:
            self.counts["failed"] += 1
            self._drop(context)
            context._give_up(waiting[2])

    def _give_up_all(self) -> None:
        """registry.stop: runs waiting for a restart stay failed (retry them later)."""
        for run_id in list(self.retries):
            self._cancel_restart(run_id)

    # --- leases -----------------------------------------------------------------------

    def _arm_renewal(self) -> None:
        if self.renewing or self.registry._stopped:
            return
        self.renewing = True
        every = self.registry.lease_ttl / 3
        self.registry._timers.schedule(every, lambda: self._tell(_Renew()))

    def _renew(self) -> None:
        """Extend the lease of every running run this registry drives, one write per store."""
        self.renewing = False
        until = self.registry.clock.wall() + self.registry.lease_ttl
        for store, run_ids in _running_by_store(self.live.values()):
            try:
                store.renew_leases(self.registry.owner, run_ids, until)
            except Exception:
                _log.exception("stageline registry: renewing leases failed")
        if self.live:
            self._arm_renewal()

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
        if window[1] is not None and window[1].cancelled:
            return  # fired just before a fast-path resume cancelled it (Registry._track)
        self._export_safely(message.run_id)

    def _export_safely(self, run_id: str) -> None:
        """Export one run; if its bundle cannot be made, say so and let the run go anyway.

        The checkpoint (without artifacts) stays, so the run can still be resumed; only
        artifacts over `max_bundle_bytes` (or unencodable) are lost, and the log says so.
        A store that fails the write (locked, full, read-only) may recover: the run stays
        live and the export is tried again after EXPORT_RETRY seconds (at stop: given up).
        """
        try:
            self._export(run_id)
        except StoreError:
            if not self.registry._stopped:
                _log.warning(
                    "stageline registry: the store refused the export of paused run %r; it "
                    "stays live, and the export is retried in %ss",
                    run_id,
                    EXPORT_RETRY,
                    exc_info=True,
                )
                self._arm_window(run_id, EXPORT_RETRY)
                return
            self._give_up_export(run_id)
        except Exception:
            self._give_up_export(run_id)

    def _give_up_export(self, run_id: str) -> None:
        """Called while handling the export's exception: log it and let the run go."""
        _log.exception(
            "stageline registry: exporting the artifacts of paused run %r failed; the run "
            "stays resumable from its checkpoint without them",
            run_id,
        )
        self.windows.pop(run_id, None)
        context = self.live.get(run_id)
        if context is not None:
            with context._lock:  # as in _forget: a run resumed meanwhile stays
                if context.status == lifecycle.PAUSED:
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
            "pause_windows": sum(
                1 for _, handle in self.windows.values() if handle is None or not handle.cancelled
            ),
            "retrying": len(self.retries),
            **self.counts,
        }


@dataclass(frozen=True, slots=True)
class _Counted:
    name: str
    n: int


def _running_by_store(contexts: Any) -> list[tuple[Store, list[str]]]:
    """The ids of the running runs among `contexts`, grouped by their store."""
    groups: dict[int, tuple[Store, list[str]]] = {}
    for context in contexts:
        if context.status in (lifecycle.RUNNING, lifecycle.PENDING):
            store = context._deps.store
            groups.setdefault(id(store), (store, []))[1].append(context.run_id)
    return list(groups.values())


class Registry:
    """A supervisor for the runs of one process (one per daemon); a context manager.

    `default_pause_timeout`: seconds a paused run stays live when its Pause gave no
    timeout. `checkpoint_ttl`: when set, a run paused longer (while this registry runs)
    is marked "expired" and its checkpoint cleared. `supervision`: a RetryPolicy to
    restart failed runs (None: failed runs stay failed). `lease_ttl`: seconds a running
    run's lease lasts; the registry renews it every third of that, and once a process
    is gone its runs can be recovered after at most this long. `owner`: this process's
    id in the store's leases (default: host:pid:random). `clock`: time for every timer
    (use a ManualClock in tests). `max_bundle_bytes`: the largest artifact bundle exported.
    """

    def __init__(
        self,
        *,
        default_pause_timeout: float = 300.0,
        checkpoint_ttl: float | None = None,
        supervision: RetryPolicy | None = None,
        lease_ttl: float = 30.0,
        owner: str | None = None,
        clock: Clock | None = None,
        max_bundle_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if default_pause_timeout < 0:
            raise StagelineError(f"default_pause_timeout must be >= 0, got {default_pause_timeout}")
        if checkpoint_ttl is not None and checkpoint_ttl <= 0:
            raise StagelineError(f"checkpoint_ttl must be None or > 0, got {checkpoint_ttl}")
        if supervision is not None and not isinstance(supervision, RetryPolicy):
            raise StagelineError(
                f"supervision must be a RetryPolicy or None, got {type(supervision).__name__}"
            )
        if not lease_ttl > 0:
            raise StagelineError(f"lease_ttl must be > 0 seconds, got {lease_ttl}")
        self.default_pause_timeout = default_pause_timeout
        self.checkpoint_ttl = checkpoint_ttl
        self.supervision = supervision
        self.lease_ttl = float(lease_ttl)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock: Clock = clock or SystemClock()
        self.max_bundle_bytes = max_bundle_bytes
        self._live: dict[str, RunContext] = {}
        self._windows: dict[str, tuple[int, TimerHandle | None]] = {}
        self._factories: dict[str, PipelineFactory] = {}
        self._factories_lock = threading.Lock()
        self._fast_resumes = 0
        self._changed = threading.Condition()
        self._generation = 0
        self._timers = TimerService(self.clock)
        self._runtime = Runtime(self.clock, self._timers, shared_workers())
        self._actor = RegistryActor.start(self)
        self._stopped = False

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def live_runs(self) -> list[RunContext]:
        """Every RunContext this registry holds: running, paused within its window, or
        failed and waiting for its restart."""
        runs: Any = self._actor.ask(_LiveRuns())
        return list(runs)

    def stats(self) -> dict[str, int]:
        """Counts: live, running, paused_live, pause_windows, retrying (failed, waiting for
        a restart), paused, exported, expired, ended, failed (stayed failed), restarts,
        crashed (actors that died of a runtime bug), recovered, resumed_fast."""
        stats: Any = self._actor.ask(_Stats())
        return {**stats, "resumed_fast": self._fast_resumes}

    def failed_runs(self) -> list[RunInfo]:
        """The failed runs in the stores of this registry's factories, oldest first.

        The factories are those made with `registry=` this registry or given to
        `recover`/`retry` (a factory with a `store_factory` cannot be listed).
        """
        found: dict[str, RunInfo] = {}
        for factory in self._known_factories():
            if factory.store is not None:
                for info in factory.store.list_runs("failed", factory.pipeline.id):
                    found.setdefault(info.run_id, info)
        return sorted(found.values(), key=lambda info: info.updated_at)

    def retry(self, run_id: str, factory: PipelineFactory | None = None) -> RunContext:
        """Restart a failed run now, from its failed stage; returns its started RunContext.

        A run this registry holds waiting for its restart restarts at once (same context).
        Otherwise the run is read from the store of `factory`, or of the factory of this
        registry that holds it (see `failed_runs`), and claimed failed -> running in one
        compare-and-set: of racing retries exactly one wins, the others raise
        RunStateError. `wait()` on the context for the outcome. A manual retry is not
        limited by the policy's max_restarts, but counts as a restart.
        """
        self._check_open("retry")
        if factory is not None:
            self._register(factory)
        live = self._live.get(run_id)
        if live is not None and live.status == lifecycle.FAILED:
            restarted = cast("RunContext | None", self._actor.ask(_RetryNow(run_id)))
            if restarted is not None:
                return restarted
        factory, store, record = self._find(run_id, factory)
        if record.status != lifecycle.FAILED:
            raise RunStateError(
                f"run {run_id!r} is {record.status!r}, not failed; only a failed run can be "
                "retried (resume a paused run, recover a running one)"
            )
        context = self._claim(factory, store, record, "retry")
        if context is None:
            raise RunStateError(
                f"run {run_id!r} is no longer failed: another retry won the race; "
                "it runs elsewhere now"
            )
        return context

    def recover(self, factory: PipelineFactory) -> list[RunContext]:
        """Resume the runs of `factory`'s pipeline left "running" by a process that is gone.

        A running run is taken over when it has no owner (it was driven without a
        registry) or its owner's lease has run out; a pending run when the registry that
        prepared it let its lease run out (it died before starting it). Each is taken by
        one `claim_run` compare-and-set: of processes racing for a run exactly one wins.
        It continues from its last committed stage (the stage in flight when the owner
        died runs again; committed stages never do); a pending run starts at its entry.
        Returns the started RunContexts (`wait()` on them). The factory is remembered for
        `retry`.
        """
        self._check_open("recover")
        if factory.store is None:
            raise StagelineError(
                f"recover needs a factory with one `store` to list the runs of pipeline "
                f"{factory.pipeline.id!r}; a store_factory cannot be listed"
            )
        self._register(factory)
        store = factory.store
        contexts = []
        found = [
            *store.list_runs(lifecycle.RUNNING, factory.pipeline.id),
            *store.list_runs(lifecycle.PENDING, factory.pipeline.id),
        ]
        for info in found:
            if info.run_id in self._live:
                continue
            now = self.clock.wall()
            if not is_orphaned(store.load_run(info.run_id), now):
                continue
            if not store.claim_run(info.run_id, self.owner, now + self.lease_ttl, now=now):
                continue  # another process was first
            try:
                claimed = self._take_over(factory, store, store.load_run(info.run_id))
            except StagelineError:  # this run cannot go on here; the others still can
                _log.exception("stageline registry: recovering run %r failed", info.run_id)
                continue
            if claimed is not None:
                contexts.append(claimed)
        for context in contexts:
            _log.info("stageline registry: recovered run %r", context.run_id)
        self._actor.tell(_Counted("recovered", len(contexts)))
        return contexts

    def stop(self, timeout: float | None = 10.0) -> None:
        """Shut down gracefully: no run is lost, no thread of this registry is left.

        Running runs finish and commit their current stage, then stop where they are
        ("running" in the store, resumable by `recover`); runs still busy when `timeout`
        passes are stopped at their last commit, as a crash would. Their leases are
        released, so another process's `recover` can take them at once. Failed runs
        waiting for a restart stay failed (`retry` them later). Every live paused run's
        artifacts are exported into its checkpoint. Then the registry's actor and timer
        thread stop.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._actor.ask(_GiveUpAll(), timeout=30)
        except pykka.Timeout:
            _log.error("stageline registry: cancelling restarts did not finish in time")
        live = self.live_runs()
        draining = [f for f in (c._drain() for c in live) if f is not None]
        concurrent.futures.wait(draining, timeout=_remaining(deadline))
        try:  # exporting is never skipped for lack of time: it is what keeps artifacts
            self._actor.ask(_ExportAll(), timeout=max(_remaining(deadline) or 0.0, 30.0))
        except pykka.Timeout:
            _log.error("stageline registry: exporting paused runs did not finish in time")
        left = [c for c in live if c.status in (lifecycle.RUNNING, lifecycle.PENDING)]
        for context in left:
            context._force_stop()
        self._release(left)
        try:
            self._actor.stop(timeout=5.0)
        except pykka.Timeout:
            _log.error("stageline registry: its actor did not stop in time")
        self._timers.stop()
        shared_carriers().retire_idle(timeout=5.0)

    # --- used by RunContext and PipelineFactory ---------------------------------------

    def _track(self, context: RunContext) -> None:
        record = context._record
        now = self.clock.wall()
        stale = record.lease_until is None or record.lease_until < now + self.lease_ttl / 2
        if record.owner == self.owner and stale:  # prepared long ago: renew before it runs
            context._deps.store.renew_leases(self.owner, [record.run_id], now + self.lease_ttl)
        if self._live.get(context.run_id) is context:
            # Resumed on the fast path and still held: the registry's actor has nothing
            # to do (the lease renewal runs while any run is live), only the pause
            # window's timer must not fire. Cancelling it here, not by a message, spares
            # the resume a wake-up of the registry's thread. Its stale entry goes when
            # the run ends or pauses again. An export that let go of the run first
            # (under the run's lock, before the claim) took it out of `_live`: then
            # the message below tracks it again.
            window = self._windows.get(context.run_id)
            if window is not None and window[1] is not None:
                window[1].cancel()
            return
        self._actor.tell(_Track(context))

    def _ended(
        self,
        context: RunContext,
        result: RunResult | None,
        pause: Any,
        error: BaseException | None = None,
    ) -> bool:
        """Tell the registry a segment ended; True if it will restart the run."""
        timeout = getattr(pause, "timeout", None)
        message = _Ended(context, result, timeout, error, context._segment)
        try:
            if error is not None or context.status in (lifecycle.PAUSED, lifecycle.FAILED):
                # an ask: when run() returns "paused", the pause window is already armed;
                # a failed run's restart is decided before its future would end
                return bool(self._actor.ask(message, timeout=30))
            self._actor.tell(message)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
        return False

    def _cancel_restart(self, run_id: str) -> None:
        """A failed run's context was aborted: if it waits for a restart, it stays failed."""
        try:
            self._actor.ask(_CancelRestart(run_id), timeout=30)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass

    def _forget(self, context: RunContext) -> None:
        """Drop a live copy found stale (the store moved on without this process)."""
        self._actor.tell(_Forget(context, context._segment))

    def _resumed_fast(self) -> None:
        self._fast_resumes += 1  # a statistic: a lost increment under a race is harmless

    def _lookup(self, run_id: str) -> RunContext | None:
        """The live context of a run, if this registry holds it (a plain dict read)."""
        if self._stopped:
            return None
        return self._live.get(run_id)

    def _lease(self) -> dict[str, Any]:
        """The lease fields a commit that takes a run for this registry carries."""
        return {"owner": self.owner, "lease_until": self.clock.wall() + self.lease_ttl}

    def _register(self, factory: PipelineFactory) -> None:
        with self._factories_lock:
            self._factories[factory.pipeline.id] = factory

    # --- supervision helpers ----------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._stopped:
            raise RunStateError(f"cannot {what}: this registry was stopped; create a new Registry")

    def _known_factories(self) -> list[PipelineFactory]:
        with self._factories_lock:
            return list(self._factories.values())

    def _find(
        self, run_id: str, factory: PipelineFactory | None
    ) -> tuple[PipelineFactory, Store, RunRecord]:
        """The factory, store and record of `run_id` (the given factory, else a known one)."""
        candidates = [factory] if factory is not None else self._known_factories()
        for candidate in candidates:
            store = candidate.store_for(run_id)
            try:
                record = store.load_run(run_id)
            except RunNotFound:
                continue
            if record.pipeline_id == candidate.pipeline.id:
                return candidate, store, record
            if factory is not None:
                raise StagelineError(
                    f"run {run_id!r} belongs to pipeline {record.pipeline_id!r}, not "
                    f"{candidate.pipeline.id!r}; retry it with that pipeline's factory"
                )
        raise RunNotFound(
            f"run {run_id!r} is in none of the stores of this registry's factories "
            f"(pipelines: {', '.join(sorted(f.pipeline.id for f in candidates)) or 'none'}); "
            "pass factory= to retry it"
        )

    def _claim(
        self, factory: PipelineFactory, store: Store, record: RunRecord, lifecycle_event: str
    ) -> RunContext | None:
        """Continue `record` from its stage ("retry" or "recover"): one compare-and-set,
        then a started RunContext. None if another process won the race."""
        if record.stage is None or not factory.pipeline.has_stage(record.stage):
            raise StagelineError(
                f"run {record.run_id!r} is at stage {record.stage!r}, which pipeline "
                f"{factory.pipeline.id!r} v{factory.pipeline.version} does not have; "
                "use a factory with the pipeline version it ran"
            )
        commit = restart_commit(
            record, lifecycle_event, self.clock.wall(), pipeline_id=factory.pipeline.id,
            **self._lease(),
        )  # fmt: skip
        try:
            claimed = record.applied(commit, store.commit(commit))
        except ConflictError:
            return None
        container = Container(record.run_id, _artifacts(factory, record))
        context = factory._context(store, claimed, record.stage, container, resumed=True)
        if lifecycle_event == "retry":
            self._actor.tell(_Counted("restarts", 1))
        context.start()
        return context

    def _take_over(
        self, factory: PipelineFactory, store: Store, record: RunRecord
    ) -> RunContext | None:
        """Start a run this registry just claimed: a pending one at its entry, a running
        one from its last commit."""
        if record.owner != self.owner:
            return None
        if record.status == lifecycle.PENDING:  # never started: start it as planned
            container = Container(record.run_id)
            context = factory._context(store, record, str(record.stage), container, resumed=False)
            context.start()
            return context
        if record.status == lifecycle.RUNNING:
            return self._claim(factory, store, record, "recover")
        return None

    def _release(self, contexts: list[RunContext]) -> None:
        """Let other processes take these runs at once (their lease ends now)."""
        for store, run_ids in _running_by_store(contexts):
            try:
                store.renew_leases(self.owner, run_ids, 0.0)
            except Exception:
                _log.exception("stageline registry: releasing leases failed")


def _artifacts(factory: PipelineFactory, record: RunRecord) -> dict[str, Any]:
    """The artifacts a run left in its checkpoint's bundle (a run that paused), else none.

    Artifacts written since live only in the memory of the process that died.
    """
    if record.checkpoint is None:
        return {}
    try:
        checkpoint = checkpoint_from_bytes(record.checkpoint, record.run_id)
        if checkpoint.container_bundle is None:
            return {}
        data: dict[str, Any] = decode_bundle(
            checkpoint.container_bundle, record.run_id, max_bytes=factory.max_bundle_bytes
        )
        return data
    except StagelineError:
        _log.exception("stageline registry: the artifacts of run %r are unreadable", record.run_id)
        return {}


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
