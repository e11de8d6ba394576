"""What `stageline requests` and `stageline status` print: the store's mailbox and its daemons.

`requests` lists the mailbox newest first, and `--cancel ID` answers a still-pending
request "failed" (one conditional write in the store: a daemon that claims it first wins,
and the cancel is refused). `status` lists the daemons whose heartbeat is in the store:
a daemon writes it at start and every third of its lease, and removes it when it stops
cleanly; one not heard from for `GONE_AFTER` lease periods is marked "gone?" (killed, or
cut off from the store). Times for people are seconds ago by the CLI's clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import click

from stageline import _cli_format as fmt
from stageline._cli_errors import UserError
from stageline._cli_mailbox import CLOCK
from stageline.core import mailbox

if TYPE_CHECKING:
    from stageline.core.mailbox import Request
    from stageline.core.store import Store

REQUEST_STATUSES: Final = ("pending", "claimed", "answered")
REQUEST_HEADERS: Final = (
    "REQUEST", "KIND", "RUN", "PIPELINE", "POSTED", "STATUS", "CLAIMED BY", "ANSWER"
)  # fmt: skip
DAEMON_HEADERS: Final = ("DAEMON", "HOST", "PID", "STARTED", "LAST HEARTBEAT", "RUNS")
GONE_AFTER: Final = 3
"""A daemon silent for this many lease periods is marked "gone?"."""
NO_DAEMON: Final = "no daemon has served this store"


# --- requests --------------------------------------------------------------------------------


def list_requests(store: Store, status: str | None, limit: int, as_json: bool) -> None:
    """Print the mailbox's requests, newest first (one JSON object a line with --json)."""
    found = store.list_requests(status=status, limit=limit)
    if as_json:
        for request in found:
            click.echo(fmt.dumps(request_dict(request)))
    elif not found:
        click.echo(f"no {status + ' ' if status else ''}requests in this store")
    else:
        click.echo(fmt.table(REQUEST_HEADERS, [request_row(r) for r in found], status_column=5))


def cancel(store: Store, request_id: str, as_json: bool) -> None:
    """Cancel a pending request; a user error naming why when it is claimed or answered."""
    cancelled = store.cancel_request(request_id)
    request = store.get_request(request_id)
    if not cancelled:
        raise UserError(not_cancelled(request))
    if as_json:
        click.echo(fmt.dumps(request_dict(request)))
    else:
        click.echo(f"cancelled {request.kind} request {request_id} for run {request.run_id}")


def not_cancelled(request: Request) -> str:
    """Why `request` could not be cancelled: a daemon claimed it, or it was answered."""
    if request.status == mailbox.CLAIMED:
        return (
            f"request {request.request_id} is claimed by daemon {request.claimed_by}, which "
            "is acting on it; it cannot be cancelled (`stageline abort RUN` stops a run)"
        )
    return f"request {request.request_id} is already answered ({request.status}); nothing to cancel"


def request_dict(request: Request) -> dict[str, Any]:
    return {
        "request_id": request.request_id,
        "kind": request.kind,
        "run_id": request.run_id,
        "pipeline_id": request.pipeline_id,
        "posted_at": fmt.iso(request.posted_at),
        "status": request.status,
        "claimed_by": request.claimed_by,
        "answered_at": fmt.iso(request.answered_at),
        "answer": request.answer,
    }


def request_row(request: Request) -> tuple[str, ...]:
    return (
        request.request_id,
        request.kind,
        request.run_id,
        request.pipeline_id or "-",
        fmt.human_time(request.posted_at),
        request.status,
        request.claimed_by or "-",
        _shortened(request.answer or "-"),
    )


def _shortened(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# --- status ----------------------------------------------------------------------------------


def status(store: Store, as_json: bool) -> None:
    """Print the daemons serving the store, from their heartbeats."""
    now = CLOCK.wall()
    beats = store.list_heartbeats()
    if as_json:
        for beat in beats:
            click.echo(fmt.dumps(daemon_dict(beat, now)))
    elif not beats:
        click.echo(NO_DAEMON)
    else:
        click.echo(fmt.table(DAEMON_HEADERS, [daemon_row(b, now) for b in beats], status_column=4))


def gone(beat: dict[str, Any], now: float) -> bool:
    """Whether the daemon has been silent for more than GONE_AFTER lease periods."""
    return bool(now - beat["beat_at"] > GONE_AFTER * beat["lease_ttl"])


def daemon_dict(beat: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        **beat,
        "started_at": fmt.iso(beat["started_at"]),
        "beat_at": fmt.iso(beat["beat_at"]),
        "seconds_since_beat": round(now - beat["beat_at"], 3),
        "gone": gone(beat, now),
    }


def daemon_row(beat: dict[str, Any], now: float) -> tuple[str, ...]:
    last = f"{max(0, round(now - beat['beat_at']))} s ago"
    return (
        beat["owner"],
        beat["host"],
        str(beat["pid"]),
        fmt.human_time(beat["started_at"]),
        f"{last}  gone?" if gone(beat, now) else last,
        str(beat["runs"]),
    )
