"""User errors of the `stageline` commands: one line on stderr, exit 1, no traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """One line on stderr, exit 1, no traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"stageline: error: {self.format_message()}", err=True)


def user_errors(command: F) -> F:
    """Turn stageline's errors into one-line user errors."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from stageline.core.errors import StagelineError

        try:
            return command(*args, **kwargs)
        except StagelineError as exc:
            raise UserError(" ".join(str(exc).split())) from None
        except UnicodeEncodeError as exc:  # an argument from bytes that are not UTF-8
            raise UserError(_not_utf8(exc)) from None

    return wrapper  # type: ignore[return-value]


def _not_utf8(exc: UnicodeEncodeError) -> str:
    from stageline.core.text import unencodable_part

    bad = unencodable_part(exc)
    return f"an argument holds {bad}, which is not valid UTF-8; pass UTF-8 text"
