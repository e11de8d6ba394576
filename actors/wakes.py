"""Wake-ups: sleeping runs that wake, and paused runs whose `Pause.expires_in` runs out.

Part of the registry's actor (it runs on the actor's thread only). Each such run has a
`wake_at` in its row; the registry arms one timer message per run it knows of: a run
that went to sleep (or paused with an expiry) in this process, and every one `recover`
lists from the store, so a registry that restarts, or another daemon, takes over the
timers of one that died. A timer that fires acts only if the stored run is still
waiting and due (never early), in one compare-and-set: of registries racing for a run
exactly one acts, the others find it moved on. What is kept per waiting run is one
small entry and its timer (no thread, no actor, no state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.checkpoint import Checkpoint
from stageline.core.errors import ConflictError, RunNotFound, StagelineError, StoreError
from stageline.core.store import RunRecord, Store, Waking
from stageline.stores.checkpoints import checkpoint_of

from .admission import commit_lease, take_slot
from .container import Container
from .handle import FactoryLink
from .registry_messages import WakeDue
from .run_seed import bundle_artifacts
from .supervisor import Supervisor
from .timers import TimerHandle

_log = logging.getLogger("stageline")

RETRY_AFTER = 5.0
"""Seconds before a wake-up the store refused is tried again."""


class Wakes:
    """The armed wake-up timers of a registry, and what happens when each fires."""

    def __init__(
        self,
        supervisor: Supervisor,
        tell: Callable[[Any], None],
        counts: dict[str, int],
        let_go: Callable[[str, str], None],
    ) -> None:
        self.supervisor = supervisor
        self.tell = tell
        self.counts = counts
        self.let_go = let_go
        """`let_go(run_id, status)`: the registry drops its live copy of a run that moved
        on without it (expired, or continued from the store)."""
        self.armed: dict[str, tuple[float, TimerHandle]] = {}

    def arm(self, run_id: str, pipeline_id: str, wake_at: float) -> None:
        """Fire at `wake_at` (wall-clock seconds) unless armed for that time already."""
        current = self.armed.get(run_id)
        if current is not None:
            if current[0] == wake_at:
                return
            current[1].cancel()
        delay = wake_at - self.supervisor.config.clock.wall()
        message = WakeDue(run_id, pipeline_id, wake_at)
        self.armed[run_id] = (
            wake_at,
            self.supervisor.timers.schedule(delay, lambda: self.tell(message)),
        )

    def arm_all(self, waking: Iterable[Waking]) -> None:
        for run in waking:
            self.arm(run.run_id, run.pipeline_id, run.wake_at)

    def cancel_all(self) -> None:
        for _, handle in self.armed.values():
            handle.cancel()
        self.armed.clear()

    def on_due(self, message: WakeDue) -> None:
        armed = self.armed.get(message.run_id)
        if armed is None or armed[0] != message.wake_at:
            return  # re-armed for another time since
        del self.armed[message.run_id]
        factory = self.supervisor.factories.get(message.pipeline_id)
        if factory is None or self.supervisor.stopped:
            return
        try:
            self._act(factory, message.run_id)
        except StoreError:  # the store may recover (locked, unreachable): try again soon
            _log.warning(
                "stageline registry: waking run %r failed; trying again in %ss",
                message.run_id, RETRY_AFTER, exc_info=True,
            )  # fmt: skip
            retry_at = self.supervisor.config.clock.wall() + RETRY_AFTER
            self.arm(message.run_id, message.pipeline_id, retry_at)
        except StagelineError:  # this run cannot go on here (damaged?); the others still can
            _log.exception("stageline registry: waking run %r failed", message.run_id)

    def _act(self, factory: FactoryLink, run_id: str) -> None:
        store = factory.store_for(run_id)
        try:
            record = store.load_run(run_id)
        except RunNotFound:
            return  # deleted meanwhile
        if record.status not in lifecycle.WAITING or record.wake_at is None:
            return  # woken, resumed or ended elsewhere
        if record.wake_at > self.supervisor.config.clock.wall():  # slept again since
            self.arm(run_id, record.pipeline_id, record.wake_at)
            return
        if record.status == lifecycle.SLEEPING:
            self._wake(factory, store, record)
        else:
            self._expire(factory, store, record)

    def _wake(self, factory: FactoryLink, store: Store, record: RunRecord) -> None:
        checkpoint = _checkpoint(record)
        state = factory.waking_state(record, checkpoint, checkpoint.resume_at)
        now, lease = self.supervisor.config.clock.wall(), self.supervisor.lease()
        commit = tr.wake(record, now, lease, state=state)
        if not self._continue(factory, store, record, commit, checkpoint, checkpoint.resume_at):
            return
        self.counts["woken"] += 1

    def _expire(self, factory: FactoryLink, store: Store, record: RunRecord) -> None:
        """A paused run's expiry came: on to `on_expiry`, or end it "expired"."""
        live = self.supervisor.live.get(record.run_id)
        if live is not None and live.status == lifecycle.PAUSED:
            self.let_go(record.run_id, lifecycle.PAUSED)  # exports it: its artifacts go on
            record = store.load_run(record.run_id)
            if record.status != lifecycle.PAUSED:
                return
        checkpoint = _checkpoint(record)
        now = self.supervisor.config.clock.wall()
        if checkpoint.on_expiry is None:
            try:
                store.commit(tr.expire(record, now))
            except ConflictError:
                return  # resumed meanwhile: the resume won
            self.let_go(record.run_id, lifecycle.EXPIRED)
        else:
            state = factory.waking_state(record, checkpoint, checkpoint.on_expiry)
            lease = self.supervisor.lease()
            commit = tr.expire_on(record, now, checkpoint.on_expiry, lease, state=state)
            if not self._continue(factory, store, record, commit, checkpoint, checkpoint.on_expiry):
                return
        self.counts["expired"] += 1

    def _continue(
        self,
        factory: FactoryLink,
        store: Store,
        record: RunRecord,
        commit: Any,
        checkpoint: Checkpoint,
        entry: str,
    ) -> bool:
        """Claim the run with `commit` and start it at `entry`; False if another process
        (a resume, another registry) moved it first."""
        artifacts = bundle_artifacts(checkpoint, factory.max_bundle_bytes)  # before the claim
        try:  # through the pipeline's limits: it may wait "queued" for a slot
            claimed, _ = take_slot(
                store, factory.pipeline, record, commit, commit_lease(commit), commit.updated_at
            )
        except ConflictError:
            return False
        claimed = replace(claimed, pipeline_version=factory.pipeline.version)  # if migrated
        run = factory.live_run(
            store, claimed, entry, Container(record.run_id, artifacts), resumed=True
        )
        run.start()
        return True


def _checkpoint(record: RunRecord) -> Checkpoint:
    return checkpoint_of(record, record.pipeline_id)
