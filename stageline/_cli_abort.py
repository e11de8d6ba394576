"""`stageline abort RUN`: post the request, then wait until the run has actually stopped.

The daemon's answer only says the abort was taken: a paused run is aborted at once, but a
running run stops when its owner sees the abort, which for a run owned by another daemon
is its next lease renewal (on PostgreSQL, a NOTIFY). So after the answer the command
reads the run until it has stopped, within the same `--timeout` as the answer.
Exit status: 0 aborted; 1 the request failed, or the run ended some other way first (it
succeeded, failed or paused before the abort reached it); NO_ANSWER when no daemon
answered, or the run was still going, when the timeout passed.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import click

from stageline import _cli_mailbox as post
from stageline._cli_errors import UserError
from stageline.core import lifecycle, mailbox

if TYPE_CHECKING:
    from stageline.core.store import RunInfo, Store

POLL_SECONDS = 0.05
"""How often the run is read while waiting for it to stop."""


def abort(
    store: Store, run_id: str, reason: str | None, wait: bool, timeout: float, as_json: bool
) -> None:
    """Post an abort of `run_id`; unless not `wait`, wait for it and report how it went."""
    request = post.make_request(mailbox.ABORT, run_id, {"reason": reason})
    if not wait:
        post.send(store, request, False, timeout, as_json)
        return
    deadline = post.CLOCK.monotonic() + timeout
    store.post_request(request)
    request = post.await_answer(store, request.request_id, timeout)
    if request.status != mailbox.DONE:  # failed (exit 1) or no answer (NO_ANSWER)
        post.report(request, True, timeout, as_json)
        return
    report(request, stopped(store, run_id, deadline), timeout, as_json)


def stopped(store: Store, run_id: str, deadline: float) -> RunInfo:
    """The run once it has stopped (ended, paused or quarantined), or as it is at
    `deadline`."""
    while True:
        info = store.get_run(run_id)
        if info.status in lifecycle.STOPPED or post.CLOCK.monotonic() >= deadline:
            return info
        time.sleep(POLL_SECONDS)


def report(request: mailbox.Request, info: RunInfo, timeout: float, as_json: bool) -> None:
    """Print the outcome: 0 aborted, 1 it stopped otherwise, NO_ANSWER still going."""
    if as_json:
        fields = {f: getattr(request, f) for f in post.JSON_FIELDS}
        click.echo(json.dumps({**fields, "run_status": info.status}))
    if info.status == lifecycle.ABORTED:
        if not as_json:
            click.echo(f"aborted run {info.run_id}")
        return
    if info.status in lifecycle.STOPPED:
        if as_json:
            sys.exit(1)
        raise UserError(
            f"run {info.run_id!r} is {info.status}, not aborted: it got there before the "
            "abort reached it" + ("; abort it again" if info.status == lifecycle.PAUSED else "")
        )
    if not as_json:
        click.echo(still_going(info, timeout), err=True)
    sys.exit(post.NO_ANSWER)


def still_going(info: RunInfo, timeout: float) -> str:
    owner = f"its owner {info.owner}" if info.owner else "the daemon driving it"
    return (
        f"stageline: run {info.run_id} is still {info.status} {timeout}s after the abort was "
        f"taken: {owner} stops it when it next renews its lease; see `stageline show "
        f"{info.run_id}`"
    )
