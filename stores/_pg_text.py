"""What PostgreSQL text can hold: the checks PostgresStore makes on ids before using them.

PostgreSQL `text` cannot hold NUL characters or text that is not valid Unicode, and run
and pipeline ids are index keys, whose size PostgreSQL limits.
"""

from __future__ import annotations

from typing import Final

from stageline.core.errors import CommitRefused, StoreError
from stageline.core.text import is_utf8

MAX_ID_BYTES: Final = 2048  # btree entries are limited to about 2.7 kB


def check_id(value: str, what: str, refusing: bool = False) -> None:
    """StoreError unless `value` is text PostgreSQL holds, short enough for an index key
    (`refusing`: CommitRefused, for a commit or a new run)."""
    check_text(value, what, value, refusing)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise (CommitRefused if refusing else StoreError)(
            f"{what} {value[:40]!r}... is {size} bytes in UTF-8; PostgresStore takes ids up "
            f"to {MAX_ID_BYTES} bytes: use a shorter id"
        )


def check_text(value: str | None, what: str, run_id: str, refusing: bool = False) -> None:
    """StoreError unless `value` (of run `run_id`) is None or text PostgreSQL can hold
    (`refusing`: CommitRefused, for a commit or a new run: it would be refused again)."""
    error = CommitRefused if refusing else StoreError
    if value is not None and "\x00" in value:
        raise error(
            f"the {what} {value[:40]!r} of run {run_id[:40]!r} contains a NUL character, "
            "which PostgreSQL text cannot hold: use an id without NUL"
        )
    if value is not None and not is_utf8(value):
        raise error(
            f"the {what} {value[:40]!r} is not valid Unicode (it came from bytes that are "
            "not UTF-8): use valid UTF-8 text"
        )


def unstorable(value: str | None) -> bool:
    """True for an id PostgreSQL cannot hold (so no stored run has it)."""
    return value is not None and ("\x00" in value or not is_utf8(value))
