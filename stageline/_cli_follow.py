"""Following a run to its end: `logs --follow`, `wait` and `start --follow`, and their exit status.

The journal holds a stage's events only once the stage commits, so while a stage runs the
follower reads the run's row: a running run whose current stage has no journaled start
since the last event read is announced once, as "stage X in flight (since ...)".
Exit status when the run stops: 0 succeeded, or paused (it waits for a resume; the last
line says so); 1 failed, aborted, expired or quarantined. Ctrl-C exits 130, quietly.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stageline import _cli_format as fmt
from stageline import _cli_times as times
from stageline.core import lifecycle

if TYPE_CHECKING:
    from stageline.core.store import RunInfo, Store

F = TypeVar("F", bound=Callable[..., Any])

POLL_SECONDS = 0.05
"""How often a followed run is read."""
INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as shells report it."""
STILL_GOING = 3
"""`wait --timeout` passed with the run still going (as a request no daemon answered)."""


def interruptible(command: F) -> F:
    """Ctrl-C ends the command with exit status 130 and no "Aborted!" line."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def exit_status(info: RunInfo) -> int:
    """0 succeeded or paused (waiting for a resume), 1 ended otherwise."""
    return 0 if info.status in (lifecycle.SUCCEEDED, lifecycle.PAUSED) else 1


def outcome(info: RunInfo) -> str:
    """One line: how the run stopped."""
    if info.status == lifecycle.PAUSED:
        at = info.checkpoint.resume_at if info.checkpoint is not None else info.stage
        return (
            f"run {info.run_id} is paused (resume at {at}); it waits for "
            f"`stageline resume {info.run_id}`"
        )
    line = f"run {info.run_id} {info.status}"
    if info.status != lifecycle.SUCCEEDED and info.error:
        line += ": " + " ".join(str(info.error.get("message", info.error)).split())
    return line


class Follower:
    """Prints a run's journal from `after` on, and what is in flight, until it stops."""

    def __init__(self, store: Store, run_id: str, as_json: bool) -> None:
        self.store, self.run_id, self.as_json = store, run_id, as_json
        self.after = 0
        self.announced: set[tuple[str, int]] = set()

    def step(self) -> RunInfo:
        """Print what is new; the run as read before the events (so none are missed)."""
        info = self.store.get_run(self.run_id)
        events = self.store.read_events(self.run_id, self.after)
        for event in events:
            click.echo(fmt.dumps(fmt.event_dict(event)) if self.as_json else fmt.event_line(event))
            self.after = event.seq
        if not self.as_json:  # after new events `info` may be older than they are: read again
            self.announce(self.store.get_run(self.run_id) if events else info)
        return info

    def announce(self, info: RunInfo) -> None:
        """Say once which stage runs, if the journal has not got its start yet."""
        key = (str(info.stage), self.after)
        if info.status == lifecycle.RUNNING and info.stage and key not in self.announced:
            self.announced.add(key)
            since = f"{times.local(info.updated_at)}, {times.ago(info.updated_at)}"
            click.echo(f"      stage {info.stage} in flight (since {since})")

    def to_end(self, poll_interval: float) -> RunInfo:
        """Follow until the run stops; the stopped run."""
        while True:
            info = self.step()
            if info.status in lifecycle.STOPPED:
                return info
            time.sleep(poll_interval)


def follow(store: Store, run_id: str, as_json: bool, poll_interval: float) -> None:
    """`logs --follow`: the journal until the run stops, then exit by how it stopped."""
    info = Follower(store, run_id, as_json).to_end(poll_interval)
    if not as_json:
        click.echo(outcome(info))
    sys.exit(exit_status(info))


def wait(
    store: Store, run_id: str, timeout: float | None, as_json: bool, poll_interval: float
) -> None:
    """`wait`: read the run until it stops (or `timeout` passes), print how, exit by it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    told = not sys.stderr.isatty()  # on a terminal, say once what it waits for
    while True:
        info = store.get_run(run_id)
        if info.status in lifecycle.STOPPED:
            break
        if not told:
            told = True
            click.echo(f"waiting for run {run_id} ({info.status}, stage {info.stage})", err=True)
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(poll_interval)
    if as_json:
        click.echo(fmt.dumps(fmt.run_dict(info, full=False)))
    if info.status not in lifecycle.STOPPED:
        if not as_json:
            click.echo(f"stageline: run {run_id} is still {info.status} after {timeout}s", err=True)
        sys.exit(STILL_GOING)
    if not as_json:
        click.echo(outcome(info))
    sys.exit(exit_status(info))
