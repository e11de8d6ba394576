"""Pause windows: how long a paused run stays live, its export, and checkpoint expiry.

Part of the registry's actor (it runs on the actor's thread only). When a run pauses,
a timer message closes its window after the pause's timeout; then its artifacts are
exported into the checkpoint through the run's handle (actors/export.py) and the
registry lets go of it. With a `checkpoint_ttl`, a run still paused that long later is
expired (core/transitions.expire).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.errors import StoreError

from .handle import RunHandle
from .registry_messages import PauseExpired, TtlExpired
from .supervisor import Supervisor

_log = logging.getLogger("stageline")

EXPORT_RETRY = 5.0
"""Seconds before a paused run's export is tried again after the store refused it."""


class PauseWindows:
    """The open pause windows of a registry, and what happens when each closes."""

    def __init__(
        self, supervisor: Supervisor, tell: Callable[[Any], None], counts: dict[str, int]
    ) -> None:
        self.supervisor = supervisor
        self.tell = tell
        self.counts = counts
        self.windows = supervisor.windows
        self.live = supervisor.live
        self.next_token = 0

    def open(self, run: RunHandle, timeout: float | None) -> None:
        """A run paused: hold it live for `timeout` (None: the registry's default)."""
        self.counts["paused"] += 1
        self.live[run.run_id] = run
        if timeout is None:
            timeout = self.supervisor.config.default_pause_timeout
        self.arm(run.run_id, timeout)
        self._arm_ttl(run)

    def arm(self, run_id: str, timeout: float) -> None:
        self.cancel(run_id)
        self.next_token += 1
        token = self.next_token
        if timeout <= 0:
            self.windows[run_id] = (token, None)
            self.export_safely(run_id)
            return
        message = PauseExpired(run_id, token)
        handle = self.supervisor.timers.schedule(timeout, lambda: self.tell(message))
        self.windows[run_id] = (token, handle)

    def _arm_ttl(self, run: RunHandle) -> None:
        ttl = self.supervisor.config.checkpoint_ttl
        if ttl is None:
            return
        message = TtlExpired(run.run_id, run.store, run.record.version)
        self.supervisor.timers.schedule(ttl, lambda: self.tell(message))

    def cancel(self, run_id: str) -> None:
        window = self.windows.pop(run_id, None)
        if window is not None and window[1] is not None:
            window[1].cancel()

    def on_expired(self, message: PauseExpired) -> None:
        window = self.windows.get(message.run_id)
        if window is None or window[0] != message.token:
            return  # resumed or re-paused since
        if window[1] is not None and window[1].cancelled:
            return  # fired just before a fast-path resume cancelled it (Supervisor.track)
        self.export_safely(message.run_id)

    def export_all(self) -> None:
        for run_id in [r for r, run in self.live.items() if run.status == lifecycle.PAUSED]:
            self.export_safely(run_id)

    def export_safely(self, run_id: str) -> None:
        """Export one run; if its bundle cannot be made, say so and let the run go anyway.

        The checkpoint (without artifacts) stays, so the run can still be resumed; only
        artifacts over `max_bundle_bytes` (or unencodable) are lost, and the log says so.
        A store that fails the write (locked, full, read-only) may recover: the run stays
        live and the export is tried again after EXPORT_RETRY seconds (at stop: given up).
        """
        try:
            self._export(run_id)
        except StoreError:
            if not self.supervisor.stopped:
                _log.warning(
                    "stageline registry: the store refused the export of paused run %r; it "
                    "stays live, and the export is retried in %ss",
                    run_id, EXPORT_RETRY, exc_info=True,
                )  # fmt: skip
                self.arm(run_id, EXPORT_RETRY)
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
        run = self.live.get(run_id)
        if run is not None:
            with run.lock:  # as in Forget: a run resumed meanwhile stays
                if run.status == lifecycle.PAUSED:
                    self.live.pop(run_id, None)

    def _export(self, run_id: str) -> None:
        """Write the run's bundle into its checkpoint, then let go of the run."""
        self.windows.pop(run_id, None)
        run = self.live.get(run_id)
        if run is None:
            return
        with run.lock:
            if not run.export(self.supervisor.config.max_bundle_bytes):
                return  # resumed meanwhile: it is live again
            self.live.pop(run_id, None)
        self.counts["exported"] += 1

    def on_ttl_expired(self, message: TtlExpired) -> None:
        store = message.store
        record = store.load_run(message.run_id)
        if record.status != lifecycle.PAUSED or record.version != message.version:
            return
        store.commit(tr.expire(record, self.supervisor.config.clock.wall()))
        self.counts["expired"] += 1
        run = self.live.pop(message.run_id, None)
        self.cancel(message.run_id)
        if run is not None:
            run.set_status(lifecycle.EXPIRED)
