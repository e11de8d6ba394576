"""Mailbox requests: durable messages (start, resume, retry, abort) from any process to a daemon.

A request is posted "pending" into the store's mailbox. A daemon claims it (pending ->
claimed, one conditional write, so exactly one daemon acts on it) and answers it: "done",
or "failed" with an error message the sender prints. A request claimed by a daemon that
died before answering stays "claimed": it is never acted on twice (at most once), and the
sender's wait times out telling the user to check the run.

Everything here is pure: the values, and the checks a sender can make before posting.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

from . import lifecycle

START: Final = "start"
RESUME: Final = "resume"
RETRY: Final = "retry"
ABORT: Final = "abort"
KINDS: Final = (START, RESUME, RETRY, ABORT)

PENDING: Final = "pending"
CLAIMED: Final = "claimed"
DONE: Final = "done"
FAILED: Final = "failed"
ANSWERED: Final = frozenset({DONE, FAILED})

_NEEDS: Final = {
    RESUME: (frozenset({lifecycle.PAUSED}), lifecycle.PAUSED),
    RETRY: (
        frozenset({lifecycle.FAILED, lifecycle.QUARANTINED}),
        f"{lifecycle.FAILED} or {lifecycle.QUARANTINED}",
    ),
    ABORT: (
        frozenset({lifecycle.PENDING, lifecycle.RUNNING, lifecycle.PAUSED}),
        f"{lifecycle.PENDING}, {lifecycle.RUNNING} or {lifecycle.PAUSED}",
    ),
}


@dataclass(frozen=True, slots=True)
class Request:
    """One mailbox message and, once answered, its outcome.

    `args` by kind: start `{"entry": str | None, "state": dict | None}`, resume
    `{"patch": dict | None}`, abort `{"reason": str | None}`, retry `{}`. `pipeline_id` is
    set for start (the pipeline to run); `run_id` is always set (a start names its new run).
    `answer` is the error message of a "failed" request (None when "done").
    """

    request_id: str
    kind: str
    run_id: str
    posted_at: float
    pipeline_id: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    status: str = PENDING
    claimed_by: str | None = None
    answered_at: float | None = None
    answer: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"request kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == START and not self.pipeline_id:
            raise ValueError("a start request needs a pipeline_id")

    @property
    def answered(self) -> bool:
        return self.status in ANSWERED

    def claimed(self, claimer: str) -> Request:
        return replace(self, status=CLAIMED, claimed_by=claimer)

    def answered_with(self, error: str | None, at: float) -> Request:
        return replace(self, status=FAILED if error else DONE, answer=error, answered_at=at)


def status_problem(kind: str, run_id: str, status: str) -> str | None:
    """Why a `kind` request cannot apply to a run in `status`, or None if it can.

    A sender checks this before posting (a quick answer without a daemon); the daemon's
    answer stays authoritative, since the run may change in between.
    """
    if kind not in _NEEDS:
        return None
    allowed, words = _NEEDS[kind]
    if status in allowed:
        return None
    return f"run {run_id!r} is not {words} (status {status}); cannot {kind} it"
