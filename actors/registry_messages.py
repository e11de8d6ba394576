"""Messages the registry's actor receives: small immutable values, one per thing to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stageline.core.results import RunResult
from stageline.core.store import Store

from .handle import RunHandle


@dataclass(frozen=True, slots=True)
class Track:
    """A run starts a segment: hold it."""

    run: RunHandle


@dataclass(frozen=True, slots=True)
class Ended:
    """A run's segment ended (succeeded, paused, failed, or its actor died: `error`)."""

    run: RunHandle
    result: RunResult | None
    pause_timeout: float | None
    error: BaseException | None = None
    segment: int = 0


@dataclass(frozen=True, slots=True)
class RestartDue:
    """A failed run's backoff is over (unless `token` is stale)."""

    run_id: str
    token: int


@dataclass(frozen=True, slots=True)
class RetryNow:
    """registry.retry of a run waiting for its restart."""

    run_id: str
    patch: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CancelRestart:
    """A failed run waiting for its restart stays failed."""

    run_id: str


@dataclass(frozen=True, slots=True)
class PauseExpired:
    """A paused run's live window closed (unless `token` is stale)."""

    run_id: str
    token: int


@dataclass(frozen=True, slots=True)
class TtlExpired:
    """A run paused at `version` reached the registry's checkpoint_ttl."""

    run_id: str
    store: Store
    version: int


@dataclass(frozen=True, slots=True)
class WakeDue:
    """A waiting run's `wake_at` came (unless it was re-armed for another time)."""

    run_id: str
    pipeline_id: str
    wake_at: float


@dataclass(frozen=True, slots=True)
class ArmWakes:
    """Arm a wake-up timer for each of `waking` (listed from the store by `recover`)."""

    waking: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Queued:
    """A run its limits did not admit: hold it until a slot frees."""

    run: RunHandle


class AdmitDue:
    """Time for another admission pass (runs wait for slots)."""


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop a live copy found stale, unless it was resumed since `segment`."""

    run: RunHandle
    segment: int


@dataclass(frozen=True, slots=True)
class Counted:
    """Add `n` to the statistic `name`."""

    name: str
    n: int


class Renew:
    """Renew the leases of the running runs."""


class CheckAborts:
    """Abort the running runs whose abort flag another process set (soon: a burst of
    these makes one check)."""


class AbortCheckDue:
    """The coalesced abort check is due."""


class GiveUpAll:
    """registry.stop: runs waiting for a restart stay failed."""


class LiveRuns:
    """Ask: every live run."""


class Stats:
    """Ask: the registry's counts."""


class ExportAll:
    """registry.stop: export every live paused run."""
