"""`stageline serve`'s process around the daemon: its logging, its banner, its APP's errors.

The daemon itself (stageline.daemon) configures nothing; this module does what only the
command may: it configures logging (`--log-format`: JSON lines, or structlog's console
for people), prints the start banner on a console, and shows an APP that raised on import
as one short block (its exception and the line of the application's code) on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from stageline.daemon import Daemon, DaemonOptions


def serve(
    app: str,
    store_url: str,
    *,
    log_format: str,
    options: DaemonOptions,
    registry_options: Mapping[str, Any],
    otel: bool = False,
    http: tuple[tuple[str, int] | None, str | None] = (None, None),
) -> None:
    """Run the daemon until SIGTERM/SIGINT, logging in `log_format` (configured by the
    CLI): a console banner first for "console". `otel`: set up OpenTelemetry's SDK from
    the OTEL_* environment first (stageline/_ops_otel.py). `http`: (host, port) and
    token of the console to serve beside the daemon (none when the bind is None)."""
    from stageline._daemon_app import AppImportError
    from stageline.daemon import run_daemon

    if otel:
        from stageline._ops_otel import configure_sdk

        configure_sdk()
    stops: list[Any] = []
    ready = _on_ready(store_url, log_format == "console", http, stops)
    try:
        run_daemon(app, store_url, options=options, registry_options=registry_options,
                   on_ready=ready)  # fmt: skip
    except AppImportError as exc:
        click.echo(f"stageline: error: {exc.block()}", err=True)
        sys.exit(1)
    finally:
        for stop in stops:
            stop()


def _on_ready(
    store_url: str,
    banner: bool,
    http: tuple[tuple[str, int] | None, str | None],
    stops: list[Any],
) -> Any:
    """What is done once the daemon is built: start the console beside it (`stops` gets
    how to stop it), then print the banner."""
    printed = _print_banner(store_url) if banner else None

    def ready(daemon: Daemon) -> None:
        if http[0] is not None:
            from stageline._cli_console import start_beside

            stops.append(start_beside(store_url, http[0], http[1], daemon.registry))
        if printed is not None:
            printed(daemon)

    return ready


def _print_banner(store_url: str) -> Any:
    def ready(daemon: Daemon) -> None:
        from stageline._ops_banner import banner

        click.echo(banner(store_url, daemon))

    return ready
