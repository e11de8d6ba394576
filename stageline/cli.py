"""The `stageline` command line: the daemon, and commands that talk to runs through the store.

Every command reads and writes the store named by `--store` (or `STAGELINE_STORE`), so it
works with or without a daemon running: `runs`, `show` and `logs` read the store directly;
`start`, `resume`, `retry` and `abort` post a request into the store's mailbox and (unless
`--no-wait`) wait for the daemon's answer. User errors print one line to stderr and exit 1;
no daemon answering in time exits 3 (the request stays in the mailbox).

Heavy imports (pykka, structlog, cbor2, the stores) happen inside the commands, so that
`stageline --help` starts fast.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stageline import __version__

if TYPE_CHECKING:
    from stageline.core.events import Event
    from stageline.core.mailbox import Request
    from stageline.core.store import RunInfo, Store

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = ("pending", "running", "paused", "succeeded", "failed", "aborted", "expired")
STOPPED = frozenset({"succeeded", "failed", "aborted", "expired", "paused"})
NO_ANSWER = 3
_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "aborted": "red",
    "expired": "yellow",
    "paused": "yellow",
    "running": "cyan",
    "pending": "cyan",
}


class UserError(click.ClickException):
    """One line on stderr, exit 1, no traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"stageline: error: {self.format_message()}", err=True)


def _user_errors(command: F) -> F:
    """Turn stageline's errors into one-line user errors."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from stageline.core.errors import StagelineError

        try:
            return command(*args, **kwargs)
        except StagelineError as exc:
            raise UserError(" ".join(str(exc).split())) from None
        except UnicodeEncodeError as exc:  # an argument from bytes that are not UTF-8
            from stageline.core.text import unencodable_part

            bad = unencodable_part(exc)
            raise UserError(
                f"an argument holds {bad}, which is not valid UTF-8; pass UTF-8 text"
            ) from None

    return wrapper  # type: ignore[return-value]


def _store_option(command: F) -> F:
    return click.option(
        "--store",
        "store_url",
        envvar="STAGELINE_STORE",
        metavar="URL",
        help="sqlite:///runs.db or postgresql://...; default: $STAGELINE_STORE.",
    )(command)


def _json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="JSON output, for scripts.")(
        command
    )


def _wait_options(command: F) -> F:
    command = click.option(
        "--timeout",
        type=float,
        default=10.0,
        show_default=True,
        help="Seconds to wait for the daemon's answer.",
    )(command)
    return click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Wait for the daemon's answer, or just post the request.",
    )(command)


def _open(store_url: str | None) -> Store:
    from stageline.stores.url import open_store

    if not store_url:
        raise UserError("no store given: pass --store URL or set STAGELINE_STORE")
    return open_store(store_url)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stageline")
def main() -> None:
    """stageline: durable, actor-based pipelines.

    Run a daemon with `serve`; talk to its runs with the other commands. Every command
    takes --store URL (or $STAGELINE_STORE).
    """


# --- the daemon ----------------------------------------------------------------------------


@main.command()
@click.argument("app")
@_store_option
@click.option("--poll-interval", type=float, default=0.01, show_default=True, metavar="SECONDS",
              help="How often to poll the mailbox on SQLite (PostgreSQL wakes it).")  # fmt: skip
@click.option("--pause-timeout", type=float, default=300.0, show_default=True, metavar="SECONDS",
              help="How long a paused run stays live when its Pause gave no timeout.")  # fmt: skip
@click.option("--stop-timeout", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="On SIGTERM/SIGINT, how long running stages get to commit.")  # fmt: skip
@click.option(
    "--max-restarts",
    type=int,
    default=0,
    show_default=True,
    help="Restart a failed run up to this many times (0: failed runs stay failed).",
)
@click.option(
    "--restart-backoff",
    type=float,
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait before the first restart; doubles each time (at most 60 s).",
)
@click.option(
    "--lease-ttl",
    type=float,
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How soon the runs of a dead daemon can be recovered by another.",
)
@click.option(
    "--keep-answered",
    type=click.FloatRange(min=0),
    default=86_400.0,
    show_default=True,
    metavar="SECONDS",
    help="How long answered mailbox requests are kept for their senders, then deleted.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)  # fmt: skip
@_user_errors
def serve(
    app: str,
    store_url: str | None,
    poll_interval: float,
    pause_timeout: float,
    stop_timeout: float,
    max_restarts: int,
    restart_backoff: float,
    lease_ttl: float,
    keep_answered: float,
    log_level: str,
) -> None:
    """Run the daemon: APP's pipelines, acting on the store's mailbox.

    APP is "module:attribute" naming a PipelineFactory, a Pipeline, a list of them or a
    callable returning them.

    Logs JSON lines to stdout; stops gracefully on SIGTERM or SIGINT (exit 0).
    """
    from stageline.daemon import DaemonOptions, run_daemon

    if not store_url:
        raise UserError("no store given: pass --store URL or set STAGELINE_STORE")
    from stageline.core.supervision import RetryPolicy

    options = DaemonOptions(
        poll_interval=poll_interval,
        stop_timeout=stop_timeout,
        recover_every=lease_ttl,
        keep_answered=keep_answered,
    )
    policy = RetryPolicy(max_restarts=max_restarts, backoff=restart_backoff)
    registry_options = {
        "default_pause_timeout": pause_timeout,
        "lease_ttl": lease_ttl,
        "supervision": policy if max_restarts > 0 else None,
    }
    _configure_logging(log_level)
    run_daemon(app, store_url, options=options, registry_options=registry_options)


# --- logging: the `serve` process only (the library never configures it) -----------------


def _configure_logging(level: str = "info") -> None:
    """Send structlog (the library's run events included) to stdout as JSON lines."""
    import structlog

    number = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    library = logging.getLogger("stageline")  # the registry's own warnings and errors
    library.addHandler(_ToStructlog())
    library.setLevel(number)
    library.propagate = False


class _ToStructlog(logging.Handler):
    """Forwards standard `logging` records of "stageline" to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        import structlog

        log = structlog.get_logger("stageline")
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        getattr(log, record.levelname.lower(), log.error)(record.getMessage(), **fields)


# --- requests to the daemon ----------------------------------------------------------------


@main.command()
@click.argument("pipeline")
@click.option("--entry", metavar="STAGE", help="Start at this stage (default: the first).")
@click.option("--state", "state_json", metavar="JSON", help="Merged over the initial state.")
@click.option("--run-id", metavar="ID", help="The new run's id (default: a new UUIDv7).")
@_store_option
@_wait_options
@_json_option
@_user_errors
def start(
    pipeline: str,
    entry: str | None,
    state_json: str | None,
    run_id: str | None,
    store_url: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Start a run of PIPELINE (through the daemon serving the store)."""
    state = _json_object(state_json, "--state")
    store = _open(store_url)
    if run_id is None:
        import uuid6

        run_id = str(uuid6.uuid7())
    elif _exists(store, run_id):
        raise UserError(f"run {run_id!r} already exists in this store; choose another --run-id")
    args = {"entry": entry, "state": state}
    _request(store, "start", run_id, args, wait, timeout, as_json, pipeline_id=pipeline)


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--patch", "patch_json", metavar="JSON", help="Merged into the state on resume.")
@_store_option
@_wait_options
@_json_option
@_user_errors
def resume(
    run_id: str,
    patch_json: str | None,
    store_url: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Resume a paused RUN, committing --patch with the resume."""
    patch = _json_object(patch_json, "--patch")
    store = _open(store_url)
    _check_run(store, "resume", run_id)
    _request(store, "resume", run_id, {"patch": patch}, wait, timeout, as_json)


@main.command()
@click.argument("run_id", metavar="RUN")
@_store_option
@_wait_options
@_json_option
@_user_errors
def retry(run_id: str, store_url: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Retry a failed RUN from its failed stage.

    Committed stages are not run again.
    """
    store = _open(store_url)
    _check_run(store, "retry", run_id)
    _request(store, "retry", run_id, {}, wait, timeout, as_json)


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", help="Recorded in the run's error.")
@_store_option
@_wait_options
@_json_option
@_user_errors
def abort(
    run_id: str,
    reason: str | None,
    store_url: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Abort a pending, running or paused RUN."""
    store = _open(store_url)
    _check_run(store, "abort", run_id)
    _request(store, "abort", run_id, {"reason": reason}, wait, timeout, as_json)


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{option} is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object, like '{{\"approved\": true}}'")
    return value


def _exists(store: Store, run_id: str) -> bool:
    from stageline.core.errors import RunNotFound

    try:
        store.get_run(run_id)
    except RunNotFound:
        return False
    return True


def _check_run(store: Store, kind: str, run_id: str) -> None:
    """Fail early (no daemon needed) when the run is absent or in the wrong status."""
    from stageline.core.mailbox import status_problem

    problem = status_problem(kind, run_id, store.get_run(run_id).status)
    if problem is not None:
        raise UserError(problem)


def _request(
    store: Store,
    kind: str,
    run_id: str,
    args: dict[str, Any],
    wait: bool,
    timeout: float,
    as_json: bool,
    pipeline_id: str | None = None,
) -> None:
    import uuid6

    from stageline.core.mailbox import Request

    request = Request(
        request_id=str(uuid6.uuid7()),
        kind=kind,
        run_id=run_id,
        posted_at=time.time(),
        pipeline_id=pipeline_id,
        args=args,
    )
    store.post_request(request)
    if wait:
        request = _await_answer(store, request.request_id, timeout)
    _report(request, wait, timeout, as_json)


def _await_answer(store: Store, request_id: str, timeout: float) -> Request:
    """The request once answered, or as it is when `timeout` passes."""
    deadline = time.monotonic() + timeout
    seen: int | None = None
    while True:
        version = store.mailbox_version()
        if version != seen:
            seen = version
            request = store.get_request(request_id)
            if request.answered:
                return request
        if time.monotonic() >= deadline:
            return store.get_request(request_id)
        time.sleep(0.005)


_DONE_WORDS = {"start": "started", "resume": "resumed", "retry": "retrying", "abort": "aborted"}


def _report(request: Request, waited: bool, timeout: float, as_json: bool) -> None:
    """Print the outcome; exit 1 on a failed request, NO_ANSWER when none came in time."""
    if as_json:
        fields = ("request_id", "kind", "run_id", "pipeline_id", "status", "answer")
        click.echo(json.dumps({f: getattr(request, f) for f in fields}))
    if request.status == "failed":
        if not as_json:
            raise UserError(str(request.answer))
        sys.exit(1)
    if waited and not request.answered:
        if not as_json:
            holder = (
                "no daemon claimed it"
                if request.claimed_by is None
                else f"daemon {request.claimed_by} claimed it but has not answered"
            )
            click.echo(
                f"stageline: no answer to {request.kind} request {request.request_id} for run "
                f"{request.run_id} within {timeout}s: {holder}; is `stageline serve` running "
                "on this store? (a pending request is acted on when a daemon starts)",
                err=True,
            )
        sys.exit(NO_ANSWER)
    if as_json:
        return
    if request.status == "done":
        pipeline = f" (pipeline {request.pipeline_id})" if request.pipeline_id else ""
        click.echo(f"{_DONE_WORDS[request.kind]} run {request.run_id}{pipeline}")
    else:
        click.echo(f"posted {request.kind} request {request.request_id} for run {request.run_id}")


# --- reading the store ---------------------------------------------------------------------


@main.command()
@click.option("--status", type=click.Choice(STATUSES), help="Only runs with this status.")
@click.option("--pipeline", "pipeline_id", metavar="ID", help="Only runs of this pipeline.")
@_store_option
@_json_option
@_user_errors
def runs(status: str | None, pipeline_id: str | None, store_url: str | None, as_json: bool) -> None:
    """List runs, oldest first."""
    found = _open(store_url).list_runs(status=status, pipeline_id=pipeline_id)
    if as_json:
        for info in found:
            click.echo(_dumps(_run_dict(info, full=False)))
        return
    rows = [
        (info.run_id, info.pipeline_id, info.status, info.stage or "-", _when(info))
        for info in found
    ]
    _table(("RUN", "PIPELINE", "STATUS", "STAGE", "UPDATED"), rows, status_column=2)


@main.command()
@click.argument("run_id", metavar="RUN")
@_store_option
@_json_option
@_user_errors
def show(run_id: str, store_url: str | None, as_json: bool) -> None:
    """Show one run: status, position, checkpoint, error and state."""
    info = _open(store_url).get_run(run_id)
    if as_json:
        click.echo(_dumps(_run_dict(info, full=True)))
        return
    lines = [
        ("run", info.run_id),
        ("pipeline", f"{info.pipeline_id} (version {info.pipeline_version})"),
        ("status", _coloured(info.status)),
        ("stage", info.stage or "-"),
        ("updated", _when(info)),
    ]
    if info.status in ("running", "pending") and info.owner:
        lines.append(("owner", f"{info.owner} (lease until {_lease(info)})"))
    checkpoint = info.checkpoint
    if checkpoint is not None:
        lines.append(("resume at", f"{checkpoint.resume_at} (paused on {checkpoint.paused_on})"))
    if info.error:
        lines.append(("error", str(info.error.get("message", info.error))))
    for name, value in lines:
        click.echo(f"{name:<10} {value}")
    click.echo("state")
    click.echo(_dumps(info.state, indent=2))


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--follow", "-f", is_flag=True, help="Wait for more until the run ends or pauses.")
@click.option("--poll-interval", type=float, default=0.05, show_default=True, metavar="SECONDS")
@_store_option
@_json_option
@_user_errors
def logs(
    run_id: str, follow: bool, poll_interval: float, store_url: str | None, as_json: bool
) -> None:
    """Print RUN's journal (stage and pipeline events), oldest first.

    With --follow, wait for new events and exit when the run stops: it succeeded, failed,
    was aborted or expired, or it paused (follow it again after resuming it).
    """
    store = _open(store_url)
    after = 0
    while True:
        status = store.get_run(run_id).status  # read before the events: none are missed
        events = store.read_events(run_id, after)
        for event in events:
            click.echo(_dumps(_event_dict(event)) if as_json else _event_line(event))
            after = event.seq
        if not follow or status in STOPPED:
            return
        time.sleep(poll_interval)


# --- output --------------------------------------------------------------------------------


def _dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, default=str, ensure_ascii=False)


def _when(info: RunInfo) -> str:
    return str(info.updated_at.isoformat(timespec="seconds"))


def _lease(info: RunInfo) -> str | None:
    until = info.lease_until
    return None if until is None else str(until.isoformat(timespec="seconds"))


def _coloured(status: str) -> str:
    return click.style(status, fg=_COLOURS.get(status))


def _table(headers: tuple[str, ...], rows: Sequence[Sequence[str]], status_column: int) -> None:
    """A plain table; the status column is coloured (click drops colours off a TTY)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        cells[status_column] = _coloured(row[status_column]) + " " * (
            widths[status_column] - len(row[status_column])
        )
        click.echo("  ".join(cells).rstrip())


def _run_dict(info: RunInfo, *, full: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run_id": info.run_id,
        "pipeline_id": info.pipeline_id,
        "pipeline_version": info.pipeline_version,
        "status": info.status,
        "stage": info.stage,
        "updated_at": info.updated_at.isoformat(),
    }
    if full:
        checkpoint = info.checkpoint
        data["owner"] = info.owner
        data["lease_until"] = _lease(info)
        data["error"] = info.error
        data["checkpoint"] = None if checkpoint is None else {
            "resume_at": checkpoint.resume_at,
            "paused_at_stage_id": checkpoint.paused_at_stage_id,
            "paused_on": checkpoint.paused_on,
        }  # fmt: skip
        data["state"] = info.state
    return data


def _event_dict(event: Event) -> dict[str, Any]:
    from stageline.core.events import event_to_record

    return dict(event_to_record(event))


def _event_line(event: Event) -> str:
    import datetime as dt

    ts = dt.datetime.fromtimestamp(event.ts, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    return f"{event.seq:>4}  {ts}  {event.name:<17} {_where(event):<12} {_detail(event)}".rstrip()


def _where(event: Event) -> str:
    """The stage; in a child pipeline, "child:stage" (the path below the root)."""
    if len(event.path) > 1:
        return "/".join(f"{node.pipeline_id}:{node.stage_id or ''}" for node in event.path[1:])
    return str(event.stage_id or "-")


def _detail(event: Event) -> str:
    if event.error is not None:
        return " ".join(str(event.error).split())
    if event.name == "pipeline:start":
        return f"entry={event.entry}" + (" resumed" if event.resumed else "")
    if event.routing is not None:
        return f"-> {event.routing}"
    if event.resume_at is not None:
        return f"resume at {event.resume_at}"
    if event.pause_timeout is not None:
        return f"pause_timeout={event.pause_timeout}"
    return ""
