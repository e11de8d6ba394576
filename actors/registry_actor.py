"""RegistryActor: the supervisor actor that holds a process's live runs.

It is the only writer of the Supervisor's `live` and `windows`. Its messages
(actors/registry_messages.py) come from runs (a segment started or ended), from timers
(a pause window closed, a restart is due, leases need renewing) and from the public
Registry (stats, retry, stop). Pause windows and exports are in actors/pause_windows.py,
restarts in actors/restarts.py; this module dispatches and renews leases.
"""

from __future__ import annotations

import logging
from typing import Any

import pykka

from stageline.core import lifecycle
from stageline.core.store import Store

from . import registry_messages as msg
from .admissions import Admissions
from .base import StagelineActor
from .handle import RunHandle
from .pause_windows import PauseWindows
from .restarts import Restarts
from .supervisor import Supervisor
from .wakes import Wakes

_log = logging.getLogger("stageline")

ABORT_CHECK_DELAY = 0.1
"""Seconds a check for abort flags waits, so that a burst of wake-ups makes one query."""

_COUNTS = (
    "paused", "exported", "expired", "ended", "failed", "restarts", "crashed", "recovered",
    "quarantined", "slept", "woken", "admitted",
)  # fmt: skip


class RegistryActor(StagelineActor):
    """Owns the live runs, their pause windows, restarts and lease renewal."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.live = supervisor.live
        self.counts = dict.fromkeys(_COUNTS, 0)
        self.windows = PauseWindows(supervisor, self._tell, self.counts)
        self.restarts = Restarts(supervisor, self._tell, self.counts, self._drop)
        self.wakes = Wakes(supervisor, self._tell, self.counts, self._let_go)
        self.admissions = Admissions(supervisor, self._tell, self.counts)
        self.renewing = False
        self.leases: tuple[float, set[str]] | None = None
        """When the leases written by the last renewal run out, and of which runs."""
        self.abort_check_armed = False

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except Exception:  # a registry never stops over one run's problem
            _log.exception("stageline registry: handling %r failed", type(message).__name__)
            return None
        finally:
            self.supervisor.notify_changed()  # for stageline.testing.wait_for_stats

    def _handle(self, message: Any) -> Any:
        if isinstance(message, msg.Track):
            self.windows.cancel(message.run.run_id)
            self.live[message.run.run_id] = message.run
            self._arm_renewal()
        elif isinstance(message, msg.Ended):
            return self._on_ended(message)
        elif isinstance(message, msg.Renew):
            self._renew()
        elif isinstance(message, msg.CheckAborts):
            self._arm_abort_check()
        elif isinstance(message, msg.AbortCheckDue):
            self.abort_check_armed = False
            self._check_aborts()
        elif isinstance(message, msg.Forget):
            self._forget(message)
        elif isinstance(message, msg.Counted):
            self.counts[message.name] += message.n
        elif isinstance(message, msg.LiveRuns):
            return list(self.live.values())
        elif isinstance(message, msg.Stats):
            return self._stats()
        else:
            return self._handle_timed(message)
        return None

    def _handle_timed(self, message: Any) -> Any:
        """Messages of pause windows and restarts (timers, retry, stop)."""
        if isinstance(message, msg.PauseExpired):
            self.windows.on_expired(message)
        elif isinstance(message, msg.TtlExpired):
            self.windows.on_ttl_expired(message)
        elif isinstance(message, msg.ExportAll):
            self.windows.export_all()
        elif isinstance(message, msg.RestartDue):
            self.restarts.on_due(message)
        elif isinstance(message, msg.RetryNow):
            return self.restarts.retry_now(message.run_id, message.patch)
        elif isinstance(message, msg.CancelRestart):
            self.restarts.cancel(message.run_id)
        elif isinstance(message, msg.GiveUpAll):
            self.restarts.cancel_all()
            self.wakes.cancel_all()
        elif isinstance(message, msg.WakeDue):
            self.wakes.on_due(message)
        elif isinstance(message, msg.Queued):
            self.admissions.add(message.run)
            self._arm_renewal()
        elif isinstance(message, msg.AdmitDue):
            self.admissions.on_due()
        elif isinstance(message, msg.ArmWakes):
            self.wakes.arm_all(message.waking)
        return None

    def _tell(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass

    # --- runs ---------------------------------------------------------------------------

    def _on_ended(self, message: msg.Ended) -> bool:
        """Returns True when the registry will restart the run (its future waits)."""
        try:
            return self._segment_ended(message)
        finally:
            self.admissions.run_pass()  # a slot may have freed

    def _segment_ended(self, message: msg.Ended) -> bool:
        run = message.run
        with run.lock:
            if message.segment != run.segment:
                return False  # late news (its ask timed out): the run was resumed since
        if message.error is not None:
            return self.restarts.on_crash(run, message.error)
        if run.status == lifecycle.FAILED:
            return self.restarts.on_failed(run, None)
        if run.status == lifecycle.SLEEPING:  # it holds nothing: only its timer stays
            self.counts["slept"] += 1
            self.windows.cancel(run.run_id)
            self.live.pop(run.run_id, None)
        elif run.status != lifecycle.PAUSED:
            self._drop(run)
            return False
        else:
            self.windows.open(run, message.pause_timeout)
        wake_at = run.record.wake_at
        if wake_at is not None:
            self.wakes.arm(run.run_id, run.record.pipeline_id, wake_at)
        return False

    def _forget(self, message: msg.Forget) -> None:
        """Let go of a live copy found stale, unless it was resumed since (then it runs).

        Checked under the run's lock, which the fast path's claim holds: either this
        comes first, and the resumed run is tracked again by `Supervisor.track`, or the
        claim does, and the copy is not stale any more.
        """
        run = message.run
        with run.lock:
            if self.live.get(run.run_id) is run and run.segment == message.segment:
                self.windows.cancel(run.run_id)
                self.live.pop(run.run_id, None)

    def _let_go(self, run_id: str, status: str) -> None:
        """Stop holding a live run the store moved on from: a paused one is exported
        first (its artifacts go with it), an expired one is just dropped."""
        if status == lifecycle.PAUSED:
            self.windows.export_safely(run_id)
            return
        self.windows.cancel(run_id)
        run = self.live.pop(run_id, None)
        if run is not None:
            run.set_status(status)

    def _drop(self, run: RunHandle) -> None:
        self.counts["ended"] += 1
        self.windows.cancel(run.run_id)
        self.live.pop(run.run_id, None)

    # --- leases -------------------------------------------------------------------------

    def _arm_renewal(self) -> None:
        if self.renewing or self.supervisor.stopped:
            return
        self.renewing = True
        every = self.supervisor.config.lease_ttl / 3
        self.supervisor.timers.schedule(every, lambda: self._tell(msg.Renew()))

    def _renew(self) -> None:
        """Extend the lease of every running run this registry drives, one write per store."""
        self.renewing = False
        config = self.supervisor.config
        now = config.clock.wall()
        try:
            self._let_lapsed_go(now)
            renewed = set()
            for store, run_ids in running_by_store(self.live.values()):
                try:
                    store.renew_leases(config.owner, run_ids, now + config.lease_ttl)
                    renewed.update(run_ids)
                except Exception:
                    _log.exception("stageline registry: renewing leases failed")
            self.leases = (now + config.lease_ttl, renewed)
            self._check_aborts()
        finally:
            if self.live:
                self._arm_renewal()
            else:
                self.leases = None

    def _let_lapsed_go(self, now: float) -> None:
        """Stop the limited runs whose lease ran out before this renewal (this process was
        stalled longer than its lease): their slots may be another run's now, so they must
        not go on; they stay "running" at their last commit, for a recovery to admit again."""
        if self.leases is None or now <= self.leases[0]:
            return
        for run_id in self.leases[1]:
            run = self.live.get(run_id)
            if run is not None and run.status == lifecycle.RUNNING and run.pipeline.limits:
                _log.warning(
                    "stageline registry: the lease of run %r ran out %.1fs ago (this process "
                    "stalled); its slots may be taken: stopped, to be recovered",
                    run_id, now - self.leases[0],
                )  # fmt: skip
                self.live.pop(run_id, None)
                run.force_stop()

    def _arm_abort_check(self) -> None:
        """One abort check for a burst of wake-ups (each posted request wakes a daemon)."""
        if self.abort_check_armed or not self.live:
            return
        self.abort_check_armed = True
        due = msg.AbortCheckDue()
        self.supervisor.timers.schedule(ABORT_CHECK_DELAY, lambda: self._tell(due))

    def _check_aborts(self) -> None:
        """Abort the runs whose durable abort flag another process set (SPEC 16)."""
        for store, run_ids in running_by_store(self.live.values()):
            try:
                requested = store.abort_requests(run_ids)
            except Exception:
                _log.exception("stageline registry: reading abort requests failed")
                continue
            for run_id, reason in requested.items():
                run = self.live.get(run_id)
                if run is None:
                    continue
                _log.info("stageline registry: run %r aborted by request", run_id)
                try:
                    run.abort_running(reason)
                except Exception:  # e.g. it moved on meanwhile: the others still go on
                    _log.exception("stageline registry: aborting run %r failed", run_id)

    def _stats(self) -> dict[str, int]:
        statuses = [run.status for run in self.live.values()]
        windows = self.supervisor.windows.values()
        return {
            "live": len(self.live),
            "running": statuses.count(lifecycle.RUNNING) + statuses.count(lifecycle.PENDING),
            "paused_live": statuses.count(lifecycle.PAUSED),
            "pause_windows": sum(1 for _, timer in windows if timer is None or not timer.cancelled),
            "retrying": len(self.restarts.waiting),
            "wake_timers": len(self.wakes.armed),
            "queued": statuses.count(lifecycle.QUEUED),
            **self.counts,
        }


def running_by_store(runs: Any) -> list[tuple[Store, list[str]]]:
    """The ids of the running runs among `runs`, grouped by their store."""
    groups: dict[int, tuple[Store, list[str]]] = {}
    for run in runs:
        if run.status in lifecycle.ACTIVE:
            store = run.store
            groups.setdefault(id(store), (store, []))[1].append(run.run_id)
    return list(groups.values())
