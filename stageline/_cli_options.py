"""The options the `stageline` commands share, and the values they name (a store, JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stageline._cli_errors import UserError

if TYPE_CHECKING:
    from stageline.core.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def store_option(command: F) -> F:
    return click.option(
        "--store",
        "store_url",
        envvar="STAGELINE_STORE",
        metavar="URL",
        help="sqlite:///runs.db or postgresql://...; default: $STAGELINE_STORE.",
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="JSON output, for scripts.")(
        command
    )


def wait_options(command: F) -> F:
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


def store_url_given(store_url: str | None) -> str:
    """`--store` (or $STAGELINE_STORE), or a user error saying how to give it."""
    if not store_url:
        raise UserError("no store given: pass --store URL or set STAGELINE_STORE")
    return store_url


def open_store(store_url: str | None) -> Store:
    from stageline.stores.url import open_store as open_url

    return open_url(store_url_given(store_url))


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """The JSON object an option holds (None if not given); a user error if it is not one."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{option} is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object, like '{{\"approved\": true}}'")
    return value
