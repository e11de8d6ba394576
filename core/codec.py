"""cbor2 encoding of everything stageline stores, with an allow-list decoder.

Decoding accepts only plain CBOR data plus the tags for the state types (datetime 0/1,
bignums 2/3, Decimal 4). Every other tag is refused before any object is built, the
decoded tree is checked against the state types, and nothing is ever unpickled.
"""

from __future__ import annotations

from typing import Any, Final

import cbor2

from .definition import DELETE
from .errors import BundleError
from .patch import describe, find_unstorable

DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
MAX_DEPTH: Final = 200  # above patch.MAX_DEPTH, so anything committed can be read back

# Tags cbor2 would otherwise decode into objects beyond the state types.
_REFUSED_TAGS: Final = (5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37, 52, 54,
                        100, 256, 258, 260, 261, 1004, 55799)  # fmt: skip


class _RefusedTag(ValueError):
    pass


def _refuse_tag(tag: int) -> Any:
    def refuse(value: Any, immutable: bool) -> Any:
        raise _RefusedTag(f"CBOR tag {tag} is not allowed in stageline data")

    return refuse


def _refuse_unknown(tag: Any, immutable: bool) -> Any:
    raise _RefusedTag(f"CBOR tag {getattr(tag, 'tag', '?')} is not allowed in stageline data")


_SEMANTIC_DECODERS: Final = {tag: _refuse_tag(tag) for tag in _REFUSED_TAGS}


def _encode_delete(encoder: Any, value: Any) -> None:
    if value is not DELETE:
        raise TypeError(f"cannot encode {type(value).__name__}")
    encoder.encode(cbor2.undefined)


def encode(value: Any) -> bytes:
    """CBOR bytes for a tree of state types; raise BundleError for anything else.

    `DELETE` (which appears only in patches, e.g. in journaled results) is written as
    CBOR `undefined`; `decode(..., patches=True)` reads it back as DELETE.
    """
    problem = find_unstorable(value, allow_delete=True)
    if problem is not None:
        raise BundleError(f"cannot encode the value at {problem[0]!r}: {describe(problem[1])}")
    try:
        return cbor2.dumps(value, default=_encode_delete)
    except Exception as exc:
        raise BundleError(f"cannot encode value: {exc}") from exc


def encode_trusted(value: Any) -> bytes:
    """CBOR bytes for a value already checked as state (skips the walk `encode` does).

    For the runtime's own writes: states built from validated patches, events it made.
    """
    try:
        return cbor2.dumps(value, default=_encode_delete)
    except Exception as exc:
        raise BundleError(f"cannot encode value: {exc}") from exc


def decode(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, what: str = "data", patches: bool = False
) -> Any:
    """Decode CBOR bytes that must hold only state types; raise BundleError otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BundleError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise BundleError(
            f"{what} is {len(data)} bytes, over the limit of {max_bytes} bytes "
            "(raise max_bundle_bytes if this is expected)"
        )
    try:
        value = cbor2.loads(
            bytes(data),
            semantic_decoders=_SEMANTIC_DECODERS,
            tag_hook=_refuse_unknown,
            max_depth=MAX_DEPTH,
            str_errors="strict",
        )
    except RecursionError as exc:
        raise BundleError(f"{what} is nested too deeply") from exc
    except Exception as exc:
        raise BundleError(f"{what} is not valid stageline CBOR: {_reason(exc)}") from exc
    if patches:
        value = _restore_deletes(value)
    problem = find_unstorable(value, allow_delete=patches)
    if problem is not None:
        raise BundleError(f"{what} holds, at {problem[0]!r}, {describe(problem[1])}")
    return value


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, _RefusedTag):
        cause = cause.__cause__
    return str(cause if cause is not None else exc)


def _restore_deletes(value: Any) -> Any:
    if value is cbor2.undefined:
        return DELETE
    if type(value) is dict:
        return {k: _restore_deletes(v) for k, v in value.items()}
    if type(value) is list:
        return [_restore_deletes(v) for v in value]
    return value
