"""The Registry: a supervisor for every live run of a process (the public face).

It keeps a strong reference to each live run. When a run pauses it arms a timer message
for the pause's window; if the run is not resumed by then, it exports the run's
artifacts into the checkpoint and drops the reference, after which only the store holds
the run. While the window is open, `factory.resume(run_id)` returns the same RunContext:
no store read, no decoding.

Supervision (docs/supervision.md): with a RetryPolicy, a failed run is restarted from its
failed stage by a timer message after the policy's backoff; a run whose actor died of a
runtime bug is recorded failed and restarted the same way (with the default policy when
none is given). The registry owns its running runs through leases in their stores and
renews them with a timer; `recover(factory)` takes over runs whose owner is gone.

The work is done by the registry's actor (actors/registry_actor.py) and the Supervisor it
shares with runs and factories (actors/supervisor.py); this class checks arguments and
asks them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any, cast

import pykka

from stageline.core import lifecycle
from stageline.core.clock import Clock, SystemClock
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.errors import RunStateError, StagelineError
from stageline.core.patch import check_patch
from stageline.core.store import RunInfo
from stageline.core.supervision import RetryPolicy

from . import recovery, telemetry
from . import registry_messages as msg
from .carriers import shared_carriers
from .context import RunContext
from .handle import FactoryLink, RunHandle
from .registry_actor import RegistryActor, running_by_store
from .supervisor import RegistryConfig, Supervisor

_log = logging.getLogger("stageline")


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
    `max_recoveries`: a run recovered after a crash more times than this without
    committing a stage is set "quarantined" and left alone until retried by hand (None:
    no limit).

    `supervisor` is internal: what this registry's runs and factories talk to.
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
        max_recoveries: int | None = 5,
    ) -> None:
        _check(default_pause_timeout, checkpoint_ttl, supervision, lease_ttl, max_recoveries)
        config = RegistryConfig(
            default_pause_timeout, checkpoint_ttl, supervision, float(lease_ttl),
            owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            clock or SystemClock(), max_bundle_bytes, max_recoveries,
        )  # fmt: skip
        self.supervisor = Supervisor(config)
        self.supervisor.actor = RegistryActor.start(self.supervisor)
        telemetry.watch_registry(self)

    # Settings are fixed when the registry is made (its actor reads them from its thread).

    @property
    def default_pause_timeout(self) -> float:
        return self.supervisor.config.default_pause_timeout

    @property
    def checkpoint_ttl(self) -> float | None:
        return self.supervisor.config.checkpoint_ttl

    @property
    def supervision(self) -> RetryPolicy | None:
        return self.supervisor.config.supervision

    @property
    def lease_ttl(self) -> float:
        return self.supervisor.config.lease_ttl

    @property
    def owner(self) -> str:
        return self.supervisor.config.owner

    @property
    def clock(self) -> Clock:
        return self.supervisor.config.clock

    @property
    def max_bundle_bytes(self) -> int:
        return self.supervisor.config.max_bundle_bytes

    @property
    def max_recoveries(self) -> int | None:
        return self.supervisor.config.max_recoveries

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def _actor(self) -> Any:
        return self.supervisor.actor

    def live_runs(self) -> list[RunContext]:
        """Every RunContext this registry holds: running, paused within its window, or
        failed and waiting for its restart."""
        return [run.context for run in self._live()]

    def _live(self) -> list[RunHandle]:
        runs: Any = self._actor.ask(msg.LiveRuns())
        return list(runs)

    def stats(self) -> dict[str, int]:
        """Counts: live, running, paused_live, pause_windows, retrying (failed, waiting for
        a restart), paused, exported, expired, ended, failed (stayed failed), restarts,
        crashed (actors that died of a runtime bug), recovered, quarantined (recovered too
        often without progress), resumed_fast; slept, woken and wake_timers (SPEC 15);
        queued (runs this registry holds until a slot frees), admitted, and for each limit
        (and key) of its factories' pipelines with runs, `limit:NAME[:KEY]:running` and
        `limit:NAME[:KEY]:queued`, read from their stores (SPEC 20)."""
        stats: Any = self._actor.ask(msg.Stats())
        return {**stats, "resumed_fast": self.supervisor.fast_resumes, **self._limit_stats()}

    def _limit_stats(self) -> dict[str, int]:
        """`limit:NAME[:KEY]:running` and `...:queued` for each limit and key with runs,
        read from the stores of this registry's factories whose pipelines have limits."""
        stores = {
            id(f.store): f.store
            for f in self.supervisor.known_factories()
            if f.pipeline.limits and f.store is not None
        }
        now, counts = self.supervisor.config.clock.wall(), {}
        for store in stores.values():
            for row in store.limit_usage(now):
                name = f"limit:{row['limit']}" + (f":{row['key']}" if row["key"] else "")
                counts[f"{name}:running"] = row["running"]
                counts[f"{name}:queued"] = row["queued"]
        return counts

    def failed_runs(self) -> list[RunInfo]:
        """The failed runs in the stores of this registry's factories, oldest first.

        The factories are those made with `registry=` this registry or given to
        `recover`/`retry` (a factory with a `store_factory` cannot be listed).
        """
        found: dict[str, RunInfo] = {}
        for factory in self.supervisor.known_factories():
            if factory.store is not None:
                for info in factory.store.list_runs(lifecycle.FAILED, factory.pipeline.id):
                    found.setdefault(info.run_id, info)
        return sorted(found.values(), key=lambda info: info.updated_at)

    def retry(
        self,
        run_id: str,
        factory: FactoryLink | None = None,
        *,
        patch: Mapping[str, Any] | None = None,
    ) -> RunContext:
        """Restart a failed run now, from its failed stage; returns its started RunContext.

        `patch` is merged into the run's state in the same compare-and-set (a fix for
        what made it fail: the missing data, a corrected value).

        A run this registry holds waiting for its restart restarts at once (same context).
        Otherwise the run is read from the store of `factory`, or of the factory of this
        registry that holds it (see `failed_runs`), and claimed failed -> running in one
        compare-and-set: of racing retries exactly one wins, the others raise
        RunStateError. `wait()` on the context for the outcome. A manual retry is not
        limited by the policy's max_restarts, but counts as a restart.
        """
        self._check_open("retry")
        checked = check_patch(patch, f"retry patch for run {run_id!r}")
        fixes = None if checked is None else dict(checked)
        if factory is not None:
            self.supervisor.register(factory)
        live = self.supervisor.live.get(run_id)
        if live is not None and live.status == lifecycle.FAILED:
            restarted = cast("RunContext | None", self._actor.ask(msg.RetryNow(run_id, fixes)))
            if restarted is not None:
                return restarted
        return cast("RunContext", recovery.retry(self.supervisor, run_id, factory, fixes))

    def recover(self, factory: FactoryLink) -> list[RunContext]:
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
        self.supervisor.register(factory)
        return recovery.recover(self.supervisor, factory)

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
        if self.supervisor.stopped:
            return
        self.supervisor.stopped = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._ask_at_stop(msg.GiveUpAll(), 30, "cancelling restarts")
        live = self._live()
        draining = [f for f in (run.drain() for run in live) if f is not None]
        concurrent.futures.wait(draining, timeout=_remaining(deadline))
        # exporting is never skipped for lack of time: it is what keeps artifacts
        self._ask_at_stop(msg.ExportAll(), max(_remaining(deadline) or 0.0, 30.0), "exporting")
        left = [run for run in live if run.status in lifecycle.ACTIVE]
        for run in left:
            run.force_stop()
        self._release(left)
        try:
            self._actor.stop(timeout=5.0)
        except pykka.Timeout:
            _log.error("stageline registry: its actor did not stop in time")
        self.supervisor.timers.stop()
        self.supervisor.runtime.workers.retire_idle()
        shared_carriers().retire_idle(timeout=5.0)

    def _ask_at_stop(self, message: Any, timeout: float, what: str) -> None:
        try:
            self._actor.ask(message, timeout=timeout)
        except pykka.Timeout:
            _log.error("stageline registry: %s did not finish in time", what)

    def _release(self, runs: list[Any]) -> None:
        """Let other processes take these runs at once (their lease ends now)."""
        for store, run_ids in running_by_store(runs):
            try:
                store.renew_leases(self.supervisor.config.owner, run_ids, 0.0)
            except Exception:
                _log.exception("stageline registry: releasing leases failed")

    def _check_open(self, what: str) -> None:
        if self.supervisor.stopped:
            raise RunStateError(f"cannot {what}: this registry was stopped; create a new Registry")


def _check(
    default_pause_timeout: float,
    checkpoint_ttl: float | None,
    supervision: RetryPolicy | None,
    lease_ttl: float,
    max_recoveries: int | None,
) -> None:
    if max_recoveries is not None and (type(max_recoveries) is not int or max_recoveries < 0):
        raise StagelineError(f"max_recoveries must be None or an int >= 0, got {max_recoveries!r}")
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


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
