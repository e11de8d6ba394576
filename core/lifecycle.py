"""The run lifecycle: every status word, every legal transition, and what each one writes.

Everything that affects a run's status lives here (the h11 rule): the status words
(SPEC section 19) are defined once and imported by actors, stores, CLI and SQL alike;
`TRANSITIONS` says which status an event leads to from which status; `EFFECTS` says what
else the event's commit does to the run's row (its checkpoint, error record and lease).
`stageline.core.transitions` builds each event's complete commit from these two tables;
the actors only carry it out. A pair missing from `TRANSITIONS` is illegal and raises
`RunStateError` naming the status and the event.

    pending -> running -> succeeded | failed | aborted | paused
    paused  -> running (resume) | expired | aborted (abort_paused: no actor starts)
    failed  -> running (retry: a restart by the registry's policy, or by hand)
    running -> running (recover: another process takes over a run whose owner is gone)
    running -> failed (crash: the run's actor died of a runtime bug)
    running -> quarantined (recovered more than max_recoveries times without progress)
    quarantined -> running (retry by hand releases it)
    running -> sleeping (a router's Sleep) -> running (wake: its time came, or a resume)
    sleeping -> aborted (abort_paused: no actor starts)
    paused  -> running (expire_on: Pause.expires_in ran out, on to Pause.on_expiry)
    pending | paused | sleeping | failed | quarantined | running -> queued (queue: a start,
        resume, wake, retry or recovery its pipeline's limits do not admit yet)
    queued  -> running (admit: a slot freed) | aborted (abort, abort_paused)

A new lifecycle event (sleep and wake, expiry routes, quarantine, queue and admit) is a
row in each table and one function in `transitions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .errors import RunStateError

PENDING: Final = "pending"
QUEUED: Final = "queued"
RUNNING: Final = "running"
PAUSED: Final = "paused"
SLEEPING: Final = "sleeping"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
ABORTED: Final = "aborted"
EXPIRED: Final = "expired"
QUARANTINED: Final = "quarantined"

STATUSES: Final = (
    PENDING, QUEUED, RUNNING, PAUSED, SLEEPING,
    SUCCEEDED, FAILED, ABORTED, EXPIRED, QUARANTINED,
)  # fmt: skip
"""Every status word, in lifecycle order (SPEC section 19)."""

CORRUPT: Final = "corrupt"
"""Not a status a run is ever given: how `list_runs` (and `stageline runs`) show a stored
run whose row cannot be decoded (SPEC section 16)."""

TERMINAL: Final = frozenset({SUCCEEDED, ABORTED, EXPIRED})
"""Statuses a run never leaves (failed can still be retried)."""

FINISHED: Final = frozenset({SUCCEEDED, FAILED, ABORTED, EXPIRED})
"""Statuses of runs that have ended (retention may delete them)."""

ACTIVE: Final = frozenset({PENDING, QUEUED, RUNNING})
"""Statuses of runs a process drives and holds a lease on (a queued run's registry holds
it until a slot frees, and renews its lease meanwhile)."""

STOPPED: Final = frozenset({*FINISHED, PAUSED, QUARANTINED})
"""Statuses where a run waits for nobody's process (a follower of its log may stop)."""

# --- lifecycle events -------------------------------------------------------------------

START: Final = "start"
COMMIT: Final = "commit"
SUCCEED: Final = "succeed"
FAIL: Final = "fail"
CRASH: Final = "crash"
ABORT: Final = "abort"
ABORT_PAUSED: Final = "abort_paused"
PAUSE: Final = "pause"
RESUME: Final = "resume"
EXPIRE: Final = "expire"
RETRY: Final = "retry"
RECOVER: Final = "recover"
QUARANTINE: Final = "quarantine"
SLEEP: Final = "sleep"
WAKE: Final = "wake"
EXPIRE_ON: Final = "expire_on"
QUEUE: Final = "queue"
ADMIT: Final = "admit"

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (PENDING, START): RUNNING,
    (PENDING, ABORT): ABORTED,
    (RUNNING, COMMIT): RUNNING,
    (RUNNING, SUCCEED): SUCCEEDED,
    (RUNNING, FAIL): FAILED,
    (RUNNING, CRASH): FAILED,
    (RUNNING, ABORT): ABORTED,
    (RUNNING, PAUSE): PAUSED,
    (PAUSED, RESUME): RUNNING,
    (PAUSED, EXPIRE): EXPIRED,
    (PAUSED, ABORT_PAUSED): ABORTED,
    (FAILED, RETRY): RUNNING,
    (RUNNING, RECOVER): RUNNING,
    (RUNNING, QUARANTINE): QUARANTINED,
    (QUARANTINED, RETRY): RUNNING,
    (RUNNING, SLEEP): SLEEPING,
    (SLEEPING, WAKE): RUNNING,
    (SLEEPING, ABORT_PAUSED): ABORTED,
    (PAUSED, EXPIRE_ON): RUNNING,
    (PENDING, QUEUE): QUEUED,
    (PAUSED, QUEUE): QUEUED,
    (SLEEPING, QUEUE): QUEUED,
    (FAILED, QUEUE): QUEUED,
    (QUARANTINED, QUEUE): QUEUED,
    (RUNNING, QUEUE): QUEUED,
    (QUEUED, ADMIT): RUNNING,
    (QUEUED, ABORT): ABORTED,
    (QUEUED, ABORT_PAUSED): ABORTED,
}

EVENTS: Final = frozenset(event for _, event in TRANSITIONS)

# --- what a transition writes beside the status -----------------------------------------

KEEP: Final = "keep"
"""Leave the stored value as it is."""
SET: Final = "set"
"""Write the value the transition brings (a checkpoint, an error record, a lease)."""
CLEAR: Final = "clear"
"""Write None."""


@dataclass(frozen=True, slots=True)
class Effects:
    """What one lifecycle event's commit does to the run's checkpoint, error and lease."""

    checkpoint: str
    error: str
    lease: str


EFFECTS: Final[dict[str, Effects]] = {
    START: Effects(checkpoint=KEEP, error=CLEAR, lease=KEEP),
    COMMIT: Effects(checkpoint=KEEP, error=CLEAR, lease=KEEP),
    SUCCEED: Effects(checkpoint=CLEAR, error=CLEAR, lease=KEEP),
    FAIL: Effects(checkpoint=CLEAR, error=SET, lease=KEEP),
    CRASH: Effects(checkpoint=CLEAR, error=SET, lease=KEEP),
    ABORT: Effects(checkpoint=CLEAR, error=SET, lease=KEEP),
    ABORT_PAUSED: Effects(checkpoint=CLEAR, error=SET, lease=KEEP),
    PAUSE: Effects(checkpoint=SET, error=CLEAR, lease=KEEP),
    RESUME: Effects(checkpoint=KEEP, error=KEEP, lease=SET),
    EXPIRE: Effects(checkpoint=CLEAR, error=KEEP, lease=KEEP),
    RETRY: Effects(checkpoint=KEEP, error=CLEAR, lease=SET),
    RECOVER: Effects(checkpoint=KEEP, error=KEEP, lease=SET),
    QUARANTINE: Effects(checkpoint=KEEP, error=SET, lease=KEEP),
    SLEEP: Effects(checkpoint=SET, error=CLEAR, lease=KEEP),
    WAKE: Effects(checkpoint=KEEP, error=KEEP, lease=SET),
    EXPIRE_ON: Effects(checkpoint=KEEP, error=KEEP, lease=SET),
    QUEUE: Effects(checkpoint=KEEP, error=CLEAR, lease=SET),
    ADMIT: Effects(checkpoint=KEEP, error=CLEAR, lease=SET),
}
"""The checkpoint stays while a run is paused or running again after a resume, and is
cleared in the transaction that ends the run (SPEC section 7). A sleeping run has one
too: where it wakes, and its artifacts (it holds no actor to keep them)."""

WAITING: Final = frozenset({SLEEPING, PAUSED})
"""Statuses whose runs a registry acts on at their stored `wake_at`: a sleeping run wakes,
a paused run with `Pause.expires_in` expires (SPEC section 15)."""


def transition(status: str, event: str) -> str:
    """The status after `event` happens to a run in `status`; raise if illegal."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        allowed = sorted(e for (s, e) in TRANSITIONS if s == status)
        raise RunStateError(
            f"a run that is {status!r} cannot {event!r}"
            + (f"; it can: {', '.join(allowed)}" if allowed else "; it has ended")
        ) from None


def can(status: str, event: str) -> bool:
    return (status, event) in TRANSITIONS


def sql_list(statuses: frozenset[str] | tuple[str, ...]) -> str:
    """Statuses as an SQL list literal, e.g. "('pending', 'running')", sorted.

    The words are this module's constants (plain lowercase letters), never user input.
    """
    return "(" + ", ".join(f"'{status}'" for status in sorted(statuses)) + ")"
