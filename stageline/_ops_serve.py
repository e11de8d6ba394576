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
) -> None:
    """Run the daemon until SIGTERM/SIGINT, logging in `log_format` (configured by the
    CLI): a console banner first for "console". `otel`: set up OpenTelemetry's SDK from
    the OTEL_* environment first (stageline/_ops_otel.py)."""
    from stageline._daemon_app import AppImportError
    from stageline.daemon import run_daemon

    if otel:
        from stageline._ops_otel import configure_sdk

        configure_sdk()
    ready = _print_banner(store_url) if log_format == "console" else None
    try:
        run_daemon(app, store_url, options=options, registry_options=registry_options,
                   on_ready=ready)  # fmt: skip
    except AppImportError as exc:
        click.echo(f"stageline: error: {exc.block()}", err=True)
        sys.exit(1)


def _print_banner(store_url: str) -> Any:
    def ready(daemon: Daemon) -> None:
        from stageline._ops_banner import banner

        click.echo(banner(store_url, daemon))

    return ready
