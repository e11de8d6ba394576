"""The run lifecycle: every status a run can have and every transition, in one table.

Everything that changes a run's status goes through `transition`; the actors feed it
events and carry out what it returns. A pair missing from the table is illegal and
raises `RunStateError` naming the status and the event.

    pending -> running -> succeeded | failed | aborted | paused
    paused  -> running (resume) | expired | aborted
    failed  -> running (retry: a restart by the registry's policy, or by hand)
    running -> running (recover: another process takes over a run whose owner is gone)
"""

from __future__ import annotations

from typing import Final

from .errors import RunStateError

PENDING: Final = "pending"
RUNNING: Final = "running"
PAUSED: Final = "paused"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
ABORTED: Final = "aborted"
EXPIRED: Final = "expired"

STATUSES: Final = (PENDING, RUNNING, PAUSED, SUCCEEDED, FAILED, ABORTED, EXPIRED)
TERMINAL: Final = frozenset({SUCCEEDED, ABORTED, EXPIRED})
"""Statuses a run never leaves (failed can still be retried)."""

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (PENDING, "start"): RUNNING,
    (PENDING, "abort"): ABORTED,
    (RUNNING, "commit"): RUNNING,
    (RUNNING, "succeed"): SUCCEEDED,
    (RUNNING, "fail"): FAILED,
    (RUNNING, "abort"): ABORTED,
    (RUNNING, "pause"): PAUSED,
    (PAUSED, "resume"): RUNNING,
    (PAUSED, "expire"): EXPIRED,
    (PAUSED, "abort"): ABORTED,
    (FAILED, "retry"): RUNNING,
    (RUNNING, "recover"): RUNNING,
}

EVENTS: Final = frozenset(event for _, event in TRANSITIONS)


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
