"""Request bodies and query values: size-limited, parsed, refused with a one-line reason."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from stageline._cli_errors import UserError
from stageline._cli_options import json_object as cli_json_object
from stageline.core.errors import StoreError

MAX_BODY = 1 << 20
"""The largest request body taken (1 MiB): a patch or a start's state, not a data set."""


class ApiError(Exception):
    """An answer other than success: its HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def json_object(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The body as a JSON object ({} when empty); 413 past `limit`, 400 when not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit")
    if not body.strip():
        return {}
    try:
        value = cli_json_object(bytes(body).decode("utf-8"), "the request body")
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except UserError as exc:
        raise ApiError(400, one_line(exc)) from None
    assert value is not None
    return value


def optional_object(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise ApiError(400, f'"{key}" must be a JSON object, got {type(value).__name__}')
    return value


def optional_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f'"{key}" must be a string, got {type(value).__name__}')
    return value


def query_int(request: Request, key: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"?{key}= must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"?{key}= must be between {low} and {high}, got {value}")
    return value


def query_flag(request: Request, key: str) -> bool:
    return request.query_params.get(key, "").lower() in {"1", "true", "yes"}


def damaged(exc: BaseException) -> bool:
    """Is this StoreError a stored run row too damaged to read (not an unreachable store)?"""
    from stageline.stores._rows import Damaged

    return isinstance(exc.__cause__, Damaged)


def read_run(store: Any, run_id: str) -> tuple[Any, str | None]:
    """The run's RunInfo and None; or None and why its row is too damaged to read.
    RunNotFound when absent, and any other StoreError, pass through."""
    try:
        return store.get_run(run_id), None
    except StoreError as exc:
        if damaged(exc):
            return None, str(exc)
        raise


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
