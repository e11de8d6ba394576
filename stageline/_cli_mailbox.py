"""Requests to the daemon: post one into the store's mailbox, wait for its answer, report it.

The sender checks what it can first (the run exists, its status allows the request), so a
wrong request fails at once without a daemon; the daemon's answer stays authoritative.
Exit status: 0 done (or posted, with --no-wait), 1 failed, NO_ANSWER when no daemon
answered within the timeout (the request stays in the mailbox).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from stageline._cli_errors import UserError
from stageline.core import mailbox
from stageline.core.clock import Clock, SystemClock

if TYPE_CHECKING:
    from stageline.core.mailbox import Request
    from stageline.core.store import Store

NO_ANSWER = 3
POLL_SECONDS = 0.005  # how often the mailbox version is read while waiting
CLOCK: Clock = SystemClock()
"""Where the CLI reads time: a request's `posted_at`, and the deadline of its wait."""

DONE_WORDS = {
    mailbox.START: "started",
    mailbox.RESUME: "resumed",
    mailbox.RETRY: "retrying",
    mailbox.ABORT: "aborted",
}
JSON_FIELDS = ("request_id", "kind", "run_id", "pipeline_id", "status", "answer")
ATTACHED = "attached"
"""The JSON `status` of `start --if-exists attach` on a stored run (no request posted)."""


def exists(store: Store, run_id: str) -> bool:
    from stageline.core.errors import RunNotFound

    try:
        store.get_run(run_id)
    except RunNotFound:
        return False
    return True


def existing_run(
    store: Store, run_id: str, pipeline_id: str, *, attach: bool, as_json: bool
) -> None:
    """`start --run-id` of a run already stored: print it (`--if-exists attach`, same
    pipeline only) or fail with one line. No request is posted."""
    info = store.get_run(run_id)
    if not attach:
        raise UserError(
            f"run {run_id!r} already exists in this store (pipeline {info.pipeline_id}, "
            f"{info.status}); choose another --run-id, or pass --if-exists attach"
        )
    if info.pipeline_id != pipeline_id:
        raise UserError(
            f"run {run_id!r} already exists as a run of pipeline {info.pipeline_id!r}, not "
            f"{pipeline_id!r}; choose another --run-id"
        )
    if as_json:
        fields = dict.fromkeys(JSON_FIELDS)
        fields.update(kind=mailbox.START, run_id=run_id, pipeline_id=pipeline_id)
        click.echo(json.dumps({**fields, "status": ATTACHED, "run_status": info.status}))
    else:
        click.echo(f"attached to run {run_id} (pipeline {pipeline_id}), status {info.status}")


def check_run(store: Store, kind: str, run_id: str) -> None:
    """Fail early (no daemon needed) when the run is absent or in the wrong status."""
    problem = mailbox.status_problem(kind, run_id, store.get_run(run_id).status)
    if problem is not None:
        raise UserError(problem)


def new_id() -> str:
    """A new UUIDv7, as text: the id of a request, or of a run started without --run-id."""
    import uuid6

    return str(uuid6.uuid7())


def send(store: Store, request: Request, wait: bool, timeout: float, as_json: bool) -> None:
    """Post `request`, wait for its answer unless `wait` is false, and report the outcome."""
    store.post_request(request)
    if wait:
        request = await_answer(store, request.request_id, timeout)
    report(request, wait, timeout, as_json)


def start_args(entry: str | None, state: dict[str, Any] | None, priority: int) -> dict[str, Any]:
    """A start request's args; `priority` only when not 0 (a daemon reads a missing one
    as 0, so a request without it means the same to older and newer daemons)."""
    args: dict[str, Any] = {"entry": entry, "state": state}
    if priority:
        args["priority"] = priority
    return args


def make_request(
    kind: str, run_id: str, args: dict[str, Any], pipeline_id: str | None = None
) -> Request:
    """A new request of `kind`, posted now (by the CLI's clock)."""
    return mailbox.Request(
        request_id=new_id(),
        kind=kind,
        run_id=run_id,
        posted_at=CLOCK.wall(),
        pipeline_id=pipeline_id,
        args=args,
    )


def await_answer(store: Store, request_id: str, timeout: float) -> Request:
    """The request once answered, or as it is when `timeout` passes."""
    deadline = CLOCK.monotonic() + timeout
    seen: int | None = None
    while True:
        version = store.mailbox_version()
        if version != seen:
            seen = version
            request = store.get_request(request_id)
            if request.answered:
                return request
        if CLOCK.monotonic() >= deadline:
            return store.get_request(request_id)
        time.sleep(POLL_SECONDS)


# --- the outcome ----------------------------------------------------------------------------


def report(request: Request, waited: bool, timeout: float, as_json: bool) -> None:
    """Print the outcome; exit 1 on a failed request, NO_ANSWER when none came in time."""
    if as_json:
        click.echo(json.dumps({f: getattr(request, f) for f in JSON_FIELDS}))
    if request.status == mailbox.FAILED:
        if not as_json:
            raise UserError(str(request.answer))
        sys.exit(1)
    if waited and not request.answered:
        if not as_json:
            click.echo(no_answer_message(request, timeout), err=True)
        sys.exit(NO_ANSWER)
    if not as_json:
        click.echo(outcome_line(request))


def no_answer_message(request: Request, timeout: float) -> str:
    holder = (
        "no daemon claimed it"
        if request.claimed_by is None
        else f"daemon {request.claimed_by} claimed it but has not answered"
    )
    return (
        f"stageline: no answer to {request.kind} request {request.request_id} for run "
        f"{request.run_id} within {timeout}s: {holder}; is `stageline serve` running "
        "on this store? (a pending request is acted on when a daemon starts)"
    )


def outcome_line(request: Request) -> str:
    """What a done (or, with --no-wait, a posted) request did, in one line."""
    if request.status == mailbox.DONE:
        pipeline = f" (pipeline {request.pipeline_id})" if request.pipeline_id else ""
        return f"{DONE_WORDS[request.kind]} run {request.run_id}{pipeline}"
    return f"posted {request.kind} request {request.request_id} for run {request.run_id}"
