"""Restarts: the registry's supervision of failed and crashed runs.

Part of the registry's actor (it runs on the actor's thread only). A failed run is
restarted from its failed stage after the RetryPolicy's delay, by a timer message; a run
whose actor died of a runtime bug is first recorded failed (core/transitions.crash),
then supervised the same way (with the default policy when none is given).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.errors import ConflictError, StoreError
from stageline.core.supervision import RetryPolicy, restarts

from .admission import take_slot
from .handle import RunHandle
from .registry_messages import Queued, RestartDue
from .supervisor import Supervisor
from .timers import TimerHandle

_log = logging.getLogger("stageline")


class Restarts:
    """Failed runs waiting for their restart, and the restarts themselves."""

    def __init__(
        self,
        supervisor: Supervisor,
        tell: Callable[[Any], None],
        counts: dict[str, int],
        drop: Callable[[RunHandle], None],
    ) -> None:
        self.supervisor = supervisor
        self.tell = tell
        self.counts = counts
        self.drop = drop
        self.next_token = 0
        self.waiting: dict[str, tuple[int, TimerHandle, BaseException | None]] = {}
        """Failed runs waiting for their restart: run_id -> (token, timer, crash error)."""

    def on_failed(self, run: RunHandle, crash: BaseException | None) -> bool:
        """A run ended failed: arm its restart if the policy says so, else let it go."""
        delay = self._delay(run, crash)
        if delay is None or self.supervisor.stopped:
            self.counts["failed"] += 1
            self.drop(run)
            return False
        self.next_token += 1
        message = RestartDue(run.run_id, self.next_token)
        handle = self.supervisor.timers.schedule(delay, lambda: self.tell(message))
        self.waiting[run.run_id] = (self.next_token, handle, crash)
        record = run.record
        _log.warning(
            "stageline registry: run %r failed at stage %r; restart %d in %ss",
            run.run_id, record.stage, restarts(record.state) + 1, delay,
        )  # fmt: skip
        return True

    def _delay(self, run: RunHandle, crash: BaseException | None) -> float | None:
        """Seconds until the restart, or None to leave the run failed."""
        policy = self.supervisor.config.supervision
        if crash is not None:  # a runtime bug is always recovered, within the budget
            policy = policy or RetryPolicy()
        if policy is None:
            return None
        delay: float | None = policy.next_delay(run.record, crashed=crash is not None)
        return delay

    def on_crash(self, run: RunHandle, error: BaseException) -> bool:
        """The run's actor died. A runtime bug: record the run failed, then supervise it.

        Store errors are not recovered here (the store is what failed; a conflict means
        another process drives the run): the run stays at its last commit, and once its
        lease runs out `recover` on any registry takes it over.
        """
        record = run.record
        if isinstance(error, StoreError) or record.status != lifecycle.RUNNING:
            self.drop(run)
            if isinstance(error, StoreError) and not isinstance(error, ConflictError):
                self._release_lease(run)
            return False
        commit = tr.crash(record, self.supervisor.config.clock.wall(), error)
        try:
            failed = record.applied(commit, run.store.commit(commit))
        except Exception:
            _log.exception(
                "stageline registry: recording the crash of run %r failed; it stays at its "
                "last commit for recover()",
                record.run_id,
            )
            self.drop(run)
            return False
        self.counts["crashed"] += 1
        run.committed(failed)
        return self.on_failed(run, error)

    def _release_lease(self, run: RunHandle) -> None:
        """Let `recover` (here or elsewhere) take a run whose store failed at once,
        rather than when its lease runs out. Best effort: the store may still be down."""
        try:
            run.store.renew_leases(self.supervisor.config.owner, [run.run_id], 0.0)
        except Exception:
            _log.warning(
                "stageline registry: could not release the lease of run %r; it can be "
                "recovered once its lease runs out",
                run.run_id,
            )

    def on_due(self, message: RestartDue) -> None:
        waiting = self.waiting.get(message.run_id)
        if waiting is None or waiting[0] != message.token:
            return  # retried by hand, or given up, since
        del self.waiting[message.run_id]
        run = self.supervisor.live.get(message.run_id)
        if run is not None:
            self._restart(run, waiting[2])

    def retry_now(self, run_id: str, patch: dict[str, Any] | None = None) -> Any:
        """registry.retry of a run waiting for its restart: restart it now (with `patch`
        merged); its context."""
        waiting = self.waiting.pop(run_id, None)
        run = self.supervisor.live.get(run_id)
        if waiting is None or run is None:
            return None
        waiting[1].cancel()
        return run.context if self._restart(run, waiting[2], patch) else None

    def _restart(
        self, run: RunHandle, crash: BaseException | None, patch: dict[str, Any] | None = None
    ) -> bool:
        """failed -> running in one compare-and-set, then a new segment on the same run."""
        record, now = run.record, self.supervisor.config.clock.wall()
        lease = self.supervisor.lease()
        commit = tr.retry(record, now, lease, patch=patch)
        try:  # through the pipeline's limits: it may wait "queued" for a slot
            claimed, admitted = take_slot(run.store, run.pipeline, record, commit, lease, now)
        except Exception as exc:
            if not isinstance(exc, ConflictError):
                _log.exception("stageline registry: restarting run %r failed", record.run_id)
            # else another process retried it first: it drives the run now
            self.counts["failed"] += 1
            self.drop(run)
            run.give_up(crash)
            return False
        self.counts["restarts"] += 1
        if admitted:
            run.restart(claimed)
        else:
            run.committed(claimed)
            self.tell(Queued(run))
        return True

    def cancel(self, run_id: str) -> None:
        """Do not restart this run after all: it stays failed (retry it by hand later)."""
        waiting = self.waiting.pop(run_id, None)
        if waiting is None:
            return
        waiting[1].cancel()
        run = self.supervisor.live.get(run_id)
        if run is not None:
            self.counts["failed"] += 1
            self.drop(run)
            run.give_up(waiting[2])

    def cancel_all(self) -> None:
        """registry.stop: runs waiting for a restart stay failed (retry them later)."""
        for run_id in list(self.waiting):
            self.cancel(run_id)
