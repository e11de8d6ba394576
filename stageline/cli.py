"""The `stageline` command line: the daemon, and commands that talk to runs through the store.

Every command reads and writes the store named by `--store` (or `STAGELINE_STORE`), so it
works with or without a daemon running: `runs`, `show`, `logs` and `wait` read the store;
`start`, `resume`, `retry` and `abort` post a request into the store's mailbox and (unless
`--no-wait`) wait for the daemon's answer (`abort`: for the run to stop); `gc` deletes old
finished runs. Only `serve` and `start` create a store; the others need it to exist. User
errors print one line to stderr and exit 1; no daemon answering in time exits 3 (the
request stays in the mailbox).

This module is the click group and its commands; the work is in private modules, one job
each: `_cli_errors` (one-line user errors), `_cli_options` (shared options), `_cli_mailbox`
(requests to the daemon), `_cli_abort` (waiting for an abort), `_cli_gc` (retention, on
`_retention` and `_duration`), `_cli_format` (what is printed), `_cli_times` (times for
JSON and for people), `_cli_runs` (`runs`: selection, tables), `_cli_follow` (following a
run to its end: `logs --follow`, `wait`, `start --follow`), `_cli_complete` (shell
completion of ids), `_cli_logging` (`serve`'s JSON lines), `_app_path` (where `serve`
imports APP from). Heavy imports (pykka, structlog, cbor2, the stores,
rich) happen inside the commands, so that `stageline --help` starts fast.
"""

from __future__ import annotations

import click

from stageline import __version__
from stageline import _cli_follow as following
from stageline import _cli_format as fmt
from stageline import _cli_mailbox as post
from stageline._app_path import importable_here
from stageline._cli_complete import pipeline_ids, run_ids
from stageline._cli_console import checked_bind, console, http_options
from stageline._cli_errors import user_errors
from stageline._cli_options import (
    duration,
    json_object,
    json_option,
    open_store,
    store_option,
    store_url_given,
    wait_options,
    waits,
)
from stageline.core import lifecycle, mailbox

NO_ANSWER = post.NO_ANSWER


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stageline")
def main() -> None:
    """stageline: durable, actor-based pipelines.

    Run a daemon with `serve`; talk to its runs with the other commands. Every command
    takes --store URL (or $STAGELINE_STORE).
    """


# --- the daemon ----------------------------------------------------------------------------


def configure_logging(level: str = "info", log_format: str | None = None) -> str:
    """Send structlog (the library's run events included) and the "stageline" logger to
    stdout in `log_format` (None: a console on a terminal, else JSON lines); the format
    used. The one place stageline configures logging (`serve` only)."""
    import logging
    import sys

    import structlog

    from stageline._cli_logging import default_format, processors, route_library_records

    log_format = log_format or default_format()
    number = logging.getLevelName(level.upper())
    structlog.configure(
        processors=processors(log_format),
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    route_library_records(number)
    return log_format


@main.command()
@click.argument("app")
@store_option
@click.option("--poll-interval", type=float, default=0.01, show_default=True, metavar="SECONDS",
              help="How often to poll the mailbox on SQLite (PostgreSQL wakes it).")  # fmt: skip
@click.option("--pause-timeout", type=float, default=300.0, show_default=True, metavar="SECONDS",
              help="How long a paused run stays live when its Pause gave no timeout.")  # fmt: skip
@click.option("--stop-timeout", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="On SIGTERM/SIGINT, how long running stages get to commit.")  # fmt: skip
@click.option("--max-restarts", type=int, default=0, show_default=True,
              help="Restart a failed run up to N times (0: failed runs stay failed).")  # fmt: skip
@click.option("--restart-backoff", type=float, default=1.0, show_default=True, metavar="SECONDS",
              help="Wait before the first restart; doubles each time (at most 60 s).")  # fmt: skip
@click.option("--lease-ttl", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="How soon the runs of a dead daemon can be recovered by another.")  # fmt: skip
@click.option(
    "--keep-answered",
    type=click.FloatRange(min=0),
    default=86_400.0,
    show_default=True,
    metavar="SECONDS",
    help="How long answered mailbox requests are kept for their senders, then deleted.",
)
@click.option(
    "--retain",
    metavar="DURATION",
    callback=duration,
    help="Delete finished runs last updated longer ago than this (30s, 15m, 12h, 7d), "
    "with each --lease-ttl pass. Default: keep them.",
)
@click.option(
    "--max-recoveries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    metavar="N",
    help="Quarantine a run recovered more than N times without committing a stage.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)  # fmt: skip
@click.option("--log-format", type=click.Choice(["json", "console"]),
              help="json: one JSON object a line; console: for people. "
              "Default: console on a terminal, else json.")  # fmt: skip
@click.option("--otel", is_flag=True, help="Export traces and metrics with OpenTelemetry, "
              "configured from the OTEL_* environment (docs/observability.md).")  # fmt: skip
@http_options
@user_errors
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
    retain: float | None,
    max_recoveries: int,
    log_level: str,
    log_format: str | None,
    otel: bool,
    http: str | None,
    http_token: str | None,
) -> None:
    """Run the daemon: APP's pipelines, acting on the store's mailbox.

    APP is "module:attribute" naming a PipelineFactory, a Pipeline, a list of them or a
    callable returning them. Logs to stdout; stops on SIGTERM or SIGINT (exit 0).
    """
    importable_here()  # before the imports below: nothing in the current folder shadows them
    from stageline._ops_serve import serve as serve_app
    from stageline.core.supervision import RetryPolicy
    from stageline.daemon import DaemonOptions

    store_url = store_url_given(store_url)
    options = DaemonOptions(poll_interval=poll_interval, stop_timeout=stop_timeout,
                            recover_every=lease_ttl, keep_answered=keep_answered,
                            retain=retain, heartbeat_every=lease_ttl / 3)  # fmt: skip
    policy = RetryPolicy(max_restarts=max_restarts, backoff=restart_backoff)
    registry_options = {"default_pause_timeout": pause_timeout, "lease_ttl": lease_ttl,
                        "supervision": policy if max_restarts > 0 else None,
                        "max_recoveries": max_recoveries}  # fmt: skip
    bind = None if http is None else checked_bind(http, http_token)
    serve_app(app, store_url, log_format=configure_logging(log_level, log_format), otel=otel,
              options=options, registry_options=registry_options,
              http=(bind, http_token))  # fmt: skip


# --- requests to the daemon ----------------------------------------------------------------


@main.command()
@click.argument("pipeline", shell_complete=pipeline_ids)
@click.option("--entry", metavar="STAGE", help="Start at this stage (default: the first).")
@click.option("--state", "state_json", metavar="JSON", help="Merged over the initial state.")
@click.option("--run-id", metavar="ID", help="The new run's id (default: a new UUIDv7).")
@click.option("--if-exists", type=click.Choice(["raise", "attach"]), default="raise",
              show_default=True,
              help="When --run-id is already stored: fail, or print that run.")  # fmt: skip
@click.option("--follow", "-f", is_flag=True,
              help="Then print the run's log until it ends; exit 0 succeeded, 1 not.")  # fmt: skip
@click.option("--priority", type=int, default=0, show_default=True, metavar="N",
              help="When it queues for a limit: higher goes first.")  # fmt: skip
@store_option
@wait_options
@json_option
@following.interruptible
@user_errors
def start(
    pipeline: str,
    entry: str | None,
    state_json: str | None,
    run_id: str | None,
    if_exists: str,
    follow: bool,
    priority: int,
    store_url: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Start a run of PIPELINE (through the daemon serving the store)."""
    if follow and not wait:
        raise click.UsageError("--follow needs the daemon's answer; drop --no-wait")
    state = json_object(state_json, "--state")
    store = open_store(store_url, create=True)  # a request may wait for the first daemon
    if run_id is None:
        run_id = post.new_id()
    elif post.exists(store, run_id):
        post.existing_run(store, run_id, pipeline, attach=if_exists == "attach", as_json=as_json)
        if follow:
            following.follow(store, run_id, as_json, following.POLL_SECONDS)
        return
    args = post.start_args(entry, state, priority)
    request = post.make_request(mailbox.START, run_id, args, pipeline_id=pipeline)
    post.send(store, request, wait, timeout, as_json)
    if follow:
        following.follow(store, run_id, as_json, following.POLL_SECONDS)


@main.command()
@click.argument("run_id", metavar="RUN", shell_complete=run_ids)
@click.option("--patch", "patch_json", metavar="JSON", help="Merged into the state on resume.")
@store_option
@wait_options
@json_option
@user_errors
def resume(
    run_id: str,
    patch_json: str | None,
    store_url: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Resume a paused RUN, committing --patch with the resume."""
    _post_with_patch(mailbox.RESUME, run_id, patch_json, store_url, (wait, timeout, as_json))


@main.command()
@click.argument("run_id", metavar="RUN", shell_complete=run_ids)
@click.option("--patch", "patch_json", metavar="JSON",
              help="Merged into the state with the retry (a fix for what failed).")  # fmt: skip
@store_option
@wait_options
@json_option
@user_errors
def retry(
    run_id: str,
    patch_json: str | None,
    store_url: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Retry a failed RUN from its failed stage, or release a quarantined RUN.

    Committed stages are not run again; --patch is merged into the state first.
    """
    _post_with_patch(mailbox.RETRY, run_id, patch_json, store_url, (wait, timeout, as_json))


def _post_with_patch(
    kind: str,
    run_id: str,
    patch_json: str | None,
    store_url: str | None,
    sending: tuple[bool, float, bool],
) -> None:
    """Post a resume or retry of `run_id` carrying --patch; wait as `sending` says."""
    patch = json_object(patch_json, "--patch")
    store = open_store(store_url)
    post.check_run(store, kind, run_id)
    post.send(store, post.make_request(kind, run_id, {"patch": patch}), *sending)


@main.command()
@click.argument("run_id", metavar="RUN", shell_complete=run_ids)
@click.option("--reason", help="Recorded in the run's error.")
@store_option
@waits(60.0, "the run to stop")
@json_option
@user_errors
def abort(
    run_id: str,
    reason: str | None,
    store_url: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Abort a pending, running or paused RUN, and wait until it has stopped.

    A run another daemon drives stops when that daemon next renews its lease.
    """
    from stageline._cli_abort import abort as abort_run

    store = open_store(store_url)
    post.check_run(store, mailbox.ABORT, run_id)
    abort_run(store, run_id, reason, wait, timeout, as_json)


# --- reading the store ---------------------------------------------------------------------


@main.command()
@click.option("--status", type=click.Choice(lifecycle.STATUSES), help="Only runs with this status.")
@click.option("--pipeline", "pipeline_id", metavar="ID", shell_complete=pipeline_ids,
              help="Only runs of this pipeline.")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
              help="Show the newest N runs (0: all); a last line counts the others.")  # fmt: skip
@click.option("--since", metavar="DURATION", callback=duration,
              help="Only runs created within this long: 30s, 15m, 12h, 7d.")  # fmt: skip
@store_option
@json_option
@user_errors
def runs(
    status: str | None,
    pipeline_id: str | None,
    limit: int,
    since: float | None,
    store_url: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    from stageline._cli_runs import print_runs, select

    found, more = select(open_store(store_url), status, pipeline_id, since, limit)
    print_runs(found, more, limit, as_json)


@main.command()
@click.argument("run_id", metavar="RUN", shell_complete=run_ids)
@store_option
@json_option
@user_errors
def show(run_id: str, store_url: str | None, as_json: bool) -> None:
    """Show one run: status, times, position, children, error (with tracebacks) and state."""
    from stageline.core.children import positions

    store = open_store(store_url)
    info = store.get_run(run_id)
    children = positions(store.load_run(run_id).state)  # kept under the state's reserved key
    if as_json:
        click.echo(fmt.dumps({**fmt.run_dict(info, full=True), "children": children}))
        return
    for name, value in fmt.run_fields(info):
        click.echo(f"{name:<10} {value}")
    for title, lines in (("children", fmt.children_lines(children)),
                         ("traceback", fmt.traceback_lines(info.error))):  # fmt: skip
        if lines:
            click.echo(title)
            click.echo("\n".join(lines))
    click.echo("state")
    click.echo(fmt.dumps(info.state, indent=2))


@main.command()
@click.argument("run_id", metavar="RUN", shell_complete=run_ids)
@click.option("--follow", "-f", is_flag=True, help="Wait for more until the run ends or pauses.")
@click.option("--poll-interval", type=float, default=0.05, show_default=True, metavar="SECONDS")
@store_option
@json_option
@following.interruptible
@user_errors
def logs(
    run_id: str, follow: bool, poll_interval: float, store_url: str | None, as_json: bool
) -> None:
    """Print RUN's journal (stage and pipeline events), oldest first.

    With --follow, also what is in flight, until the run stops; then one line says how,
    and the exit status is 0 if it succeeded or paused (waiting for a resume), 1 if it
    failed, was aborted or expired. Ctrl-C exits 130.
    """
    store = open_store(store_url)
    if follow:
        following.follow(store, run_id, as_json, poll_interval)  # exits by how the run stopped
    else:
        following.Follower(store, run_id, as_json).step()


@main.command()
@click.argument("run_id", metavar="RUN", shell_complete=run_ids)
@click.option("--timeout", type=float, metavar="SECONDS", help="Give up after this long (exit 3).")
@click.option("--poll-interval", type=float, default=0.05, show_default=True, metavar="SECONDS")
@store_option
@json_option
@following.interruptible
@user_errors
def wait(
    run_id: str, timeout: float | None, poll_interval: float, store_url: str | None, as_json: bool
) -> None:
    """Wait until RUN stops and print how: exit 0 succeeded or paused, 1 failed, aborted or
    expired, 3 still going after --timeout, 130 on Ctrl-C."""
    following.wait(open_store(store_url), run_id, timeout, as_json, poll_interval)


# --- retention ------------------------------------------------------------------------------


@main.command()
@click.option("--older-than", required=True, metavar="DURATION", callback=duration,
              help="Delete runs last updated longer ago than this: 30s, 15m, 12h, 7d.")  # fmt: skip
@click.option("--status", "statuses", metavar="S,...",
              help="Only these finished statuses (default: all four).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@store_option
@json_option
@user_errors
def gc(
    older_than: float, statuses: str | None, dry_run: bool, store_url: str | None, as_json: bool
) -> None:
    """Delete finished runs, with their journals, last updated before now - DURATION.

    Paused, sleeping, running, pending, queued and quarantined runs are never deleted.
    """
    from stageline._cli_gc import collect

    collect(store_url, older_than, statuses, dry_run, as_json)


# --- the fleet: the mailbox and the daemons --------------------------------------------------


@main.command()
@click.option("--status", type=click.Choice(["pending", "claimed", "answered"]),
              help="Only requests with this status (answered: done or failed).")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="At most this many, newest first.")  # fmt: skip
@click.option("--cancel", "cancel_id", metavar="ID",
              help="Answer this pending request failed, so no daemon acts on it.")  # fmt: skip
@store_option
@json_option
@user_errors
def requests(
    status: str | None, limit: int, cancel_id: str | None, store_url: str | None, as_json: bool
) -> None:
    """List the store's mailbox requests, newest first, or cancel a pending one."""
    from stageline import _cli_ops as ops

    store = open_store(store_url)
    if cancel_id is not None:
        ops.cancel(store, cancel_id, as_json)
    else:
        ops.list_requests(store, status, limit, as_json)


@main.command()
@store_option
@json_option
@user_errors
def status(store_url: str | None, as_json: bool) -> None:
    """Show the daemons serving this store, from their heartbeats."""
    from stageline import _cli_ops as ops

    ops.status(open_store(store_url), as_json)


@main.command()
@store_option
@json_option
@user_errors
def schedules(store_url: str | None, as_json: bool) -> None:
    """List the store's schedules: id, pipeline, spec, overlap, last and next fire time."""
    from stageline._cli_schedules import list_schedules

    list_schedules(open_store(store_url), as_json)


@main.command()
@store_option
@json_option
@user_errors
def limits(store_url: str | None, as_json: bool) -> None:
    """List each limit and key with runs: how many hold a slot, and how many wait queued."""
    from stageline._cli_limits import list_limits

    list_limits(open_store(store_url), as_json)


main.add_command(console)
