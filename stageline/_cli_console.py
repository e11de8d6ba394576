"""`stageline console` and `serve --http`: the operator's console over HTTP (docs/console.md).

`console` serves the pages and the API on a store and runs no pipelines: it reads the
store and posts requests to its mailbox, so one console can watch a fleet of daemons.
`serve --http` serves the same beside the daemon, which adds its runs' live events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from stageline._cli_errors import UserError, user_errors
from stageline._cli_options import store_option

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_BIND = "127.0.0.1:8080"


def token_option(command: F) -> F:
    return click.option(
        "--http-token",
        envvar="STAGELINE_HTTP_TOKEN",
        metavar="TOKEN",
        help="Required to bind anything but loopback: every request must carry it "
        "(Authorization: Bearer TOKEN; the pages ask for it). Default: $STAGELINE_HTTP_TOKEN.",
    )(command)


def http_options(command: F) -> F:
    """`serve`'s `--http HOST:PORT` and `--http-token TOKEN`."""
    command = token_option(command)
    return click.option(
        "--http",
        metavar="HOST:PORT",
        help="Also serve the console (pages and HTTP API) here, e.g. 127.0.0.1:8080.",
    )(command)


def checked_bind(http: str, token: str | None) -> tuple[str, int]:
    """(host, port) of `--http`, refused before anything starts if it is unsafe."""
    from stageline._console.server import check_bind, parse_bind

    host, port = parse_bind(http)
    check_bind(host, token)
    return host, port


def start_beside(store_url: str, bind: tuple[str, int], token: str | None, registry: Any) -> Any:
    """Serve the console on a thread beside a daemon (its own store connection, so it
    sees every commit as another process would); returns how to stop it."""
    from stageline._console.app import build_app
    from stageline._console.server import serve_in_thread
    from stageline.stores.url import open_store

    store = open_store(store_url)
    url, stop_server = serve_in_thread(build_app(store, token=token, registry=registry), *bind)
    click.echo(f"stageline: console at {url}/", err=True)

    def stop() -> None:
        stop_server()
        store.close()

    return stop


@click.command()
@store_option
@click.option("--http", default=DEFAULT_BIND, show_default=True, metavar="HOST:PORT",
              help="Where to serve the pages and the API.")  # fmt: skip
@token_option
@user_errors
def console(store_url: str | None, http: str, http_token: str | None) -> None:
    """Serve the operator's console (pages and HTTP API) on a store; run no pipelines.

    It reads the store and posts resume, retry, abort and start requests to its
    mailbox, for the daemons serving that store to act on. Stops on Ctrl-C / SIGTERM.
    """
    from stageline._cli_options import open_store
    from stageline._console.app import build_app
    from stageline._console.server import serve_forever

    host, port = checked_bind(http, http_token)
    if store_url == "memory://":
        raise UserError(
            "console needs a store other processes can reach; memory:// lives inside one "
            "process: use sqlite:///runs.db (or postgresql://...)"
        )
    store = open_store(store_url)
    try:
        click.echo(f"stageline: console on http://{host}:{port}/ (Ctrl-C stops it)", err=True)
        serve_forever(build_app(store, token=http_token), host, port)
    finally:
        store.close()
