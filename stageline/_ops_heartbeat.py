"""A daemon's heartbeat: its row in the store's `daemons` table, written, refreshed, removed.

The row says which process serves the store (the registry's owner id, pid, host), since
when, when it last beat, how many runs it holds and its lease; `stageline status` reads
the rows. Time is the registry's clock. A store error is logged, never raised: a missed
heartbeat must not stop a daemon that can still serve.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from stageline.actors.registry import Registry
from stageline.core.errors import StagelineError
from stageline.core.store import Store


class Heartbeat:
    """The heartbeat of the daemon running `registry` on `store`; `log` reports failures."""

    def __init__(self, store: Store, registry: Registry, log: Any) -> None:
        self.store = store
        self.registry = registry
        self.log = log
        self.owner = str(registry.owner)
        self.started_at: float = registry.clock.wall()

    def row(self) -> dict[str, Any]:
        """The heartbeat as of now."""
        return {
            "owner": self.owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self.started_at,
            "beat_at": self.registry.clock.wall(),
            "runs": self.registry.stats()["live"],
            "lease_ttl": self.registry.lease_ttl,
        }

    def beat(self) -> None:
        """Write the row (or replace it)."""
        try:
            self.store.record_heartbeat(self.row())
        except StagelineError as exc:
            self.log.error("daemon:heartbeat_failed", error=" ".join(str(exc).split()))

    def remove(self) -> None:
        """Delete the row: the daemon stopped cleanly."""
        try:
            self.store.remove_heartbeat(self.owner)
        except StagelineError as exc:
            self.log.error("daemon:heartbeat_failed", error=" ".join(str(exc).split()))
