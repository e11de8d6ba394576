"""Text every store can keep: valid UTF-8, so no lone surrogates (what `os.fsdecode`
makes of bytes that are not UTF-8, e.g. a shell argument)."""

from __future__ import annotations


def is_utf8(text: str) -> bool:
    """Can `text` be encoded as UTF-8 (and so stored anywhere)?"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unencodable_part(error: UnicodeEncodeError) -> str:
    """The characters that failed to encode, written as escapes (`\\udcff`)."""
    return error.object[error.start : error.end].encode("utf-8", "backslashreplace").decode()
