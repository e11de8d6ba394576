"""The options the `stageline` commands share, and the values they name (a store, JSON)."""

from __future__ import annotations

import json
import math
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


def waits(timeout: float, what: str = "the daemon's answer") -> Callable[[F], F]:
    """`--wait/--no-wait` and `--timeout SECONDS` (default `timeout`), waiting for `what`."""

    def options(command: F) -> F:
        command = click.option(
            "--timeout",
            type=float,
            default=timeout,
            show_default=True,
            help=f"Seconds to wait for {what}.",
        )(command)
        return click.option(
            "--wait/--no-wait",
            default=True,
            show_default=True,
            help=f"Wait for {what}, or just post the request.",
        )(command)

    return options


wait_options = waits(10.0)


def store_url_given(store_url: str | None) -> str:
    """`--store` (or $STAGELINE_STORE), or a user error saying how to give it."""
    if not store_url:
        raise UserError("no store given: pass --store URL or set STAGELINE_STORE")
    return store_url


def open_store(store_url: str | None, *, create: bool = False) -> Store:
    """The store `--store` names. Only commands that write (`start`, `serve`) create it:
    for the others a missing SQLite file or PostgreSQL schema is a one-line error naming
    its absolute path or schema, and nothing is created."""
    from stageline.stores.url import open_store as open_url

    return open_url(store_url_given(store_url), create=create)


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """The JSON object an option holds (None if not given); a user error if it is not one,
    or if it holds what no run's state can (NaN or Infinity, nesting too deep)."""
    if text is None:
        return None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except _NotANumber as exc:
        raise UserError(f"{option} holds {exc}, which is not a finite number; use null") from None
    except RecursionError:
        raise UserError(f"{option} is nested too deeply: {_too_deep()}") from None
    except ValueError as exc:
        raise UserError(f"{option} is not valid JSON ({exc}): {_shortened(text)}") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object, like '{{\"approved\": true}}'")
    _check_storable(value, option)
    return value


class _NotANumber(ValueError):
    """NaN, Infinity or -Infinity in JSON text (Python's json accepts them; JSON does not)."""


def _too_deep() -> str:
    from stageline.core.patch import MAX_DEPTH

    return f"a run's state nests at most {MAX_DEPTH} levels; flatten it"


def _refuse_constant(name: str) -> Any:
    raise _NotANumber(name)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as inf
        raise _NotANumber(_shortened(text, 40))
    return value


def _check_storable(value: dict[str, Any], option: str) -> None:
    from stageline.core.patch import describe, find_unstorable, show

    problem = find_unstorable(value)
    if problem is not None:
        where, bad = problem
        raise UserError(f"{option}: the value at {show(where)!r} is {describe(bad)}")


def _shortened(text: str, limit: int = 200) -> str:
    """`text` quoted, cut to `limit` characters (a huge argument stays one short line)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def duration(ctx: click.Context, param: click.Parameter, text: str | None) -> float | None:
    """The click callback of a DURATION option (30s, 15m, 12h, 7d): its seconds (None if
    not given); a one-line user error if it is not a duration."""
    from stageline._duration import DurationError, parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text, f"--{str(param.name).replace('_', '-')}")
    except DurationError as exc:
        raise UserError(str(exc)) from None
