"""State patches: deep-partial merge, private copies, and the storable-value check.

State is a tree of dict / list / str / int / float / bool / None / bytes / datetime /
Decimal. A patch is a deep-partial dict: dicts merge key by key, every other value
(lists included) replaces, and `DELETE` removes the key. Merging never mutates its inputs:
untouched subtrees are shared, so a committed state can be handed out without copying.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from .definition import DELETE
from .errors import StepError
from .text import is_utf8

PIPELINE_DATA_KEY = "__pipeline_data__"
"""Reserved top-level state key for the runtime's own records; patches may not touch it."""

State = dict[str, Any]
LEAF_TYPES: tuple[type, ...] = (str, int, float, bool, type(None), bytes, _dt.datetime, Decimal)


def merge(state: Mapping[str, Any], patch: Mapping[str, Any]) -> State:
    """Return `state` with `patch` applied; neither input is modified."""
    merged = dict(state)
    for key, value in patch.items():
        if value is DELETE:
            merged.pop(key, None)
        elif type(value) is dict:
            current = merged.get(key)
            base = current if type(current) is dict else {}
            merged[key] = merge(base, value)
        else:
            merged[key] = _without_deletes(value)
    return merged


def _without_deletes(value: Any) -> Any:
    """A replacing value is stored as given, minus DELETE markers inside new dicts."""
    if type(value) is dict:
        return {k: _without_deletes(v) for k, v in value.items() if v is not DELETE}
    return value


def merge_all(
    state: Mapping[str, Any],
    patches: list[tuple[str, Mapping[str, Any] | None]],
    on_conflict: Callable[[str, str, str], None] | None = None,
) -> State:
    """Merge patches in the order given; `on_conflict(path, earlier, later)` sees overlaps.

    An overlap is a later patch writing a leaf an earlier one wrote, or writing above or
    below it (replacing or deleting a subtree another step wrote into).
    """
    result = dict(state)
    written: dict[tuple[str, ...], str] = {}
    for owner, patch in patches:
        if not patch:
            continue
        if on_conflict is not None:
            for path in leaf_paths(patch):
                key = tuple(path.split("."))
                for other_key, other in written.items():
                    if other != owner and _overlaps(key, other_key):
                        on_conflict(path, other, owner)
            for path in leaf_paths(patch):
                written[tuple(path.split("."))] = owner
        result = merge(result, patch)
    return result


def _overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def leaf_paths(patch: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the leaves a patch writes (a replaced list counts as one leaf)."""
    paths: list[str] = []
    for key, value in patch.items():
        path = f"{prefix}.{show(key)}" if prefix else show(key)
        if type(value) is dict and value:
            paths.extend(leaf_paths(value, path))
        else:
            paths.append(path)
    return paths


def copy_state(value: Any) -> Any:
    """A private deep copy of a state tree (leaves are immutable and shared)."""
    kind = type(value)
    if kind is dict:
        return {k: copy_state(v) for k, v in value.items()}
    if kind is list:
        return [copy_state(v) for v in value]
    return value


def public_state(state: Mapping[str, Any]) -> State:
    """The state a user sees: without the runtime's reserved key."""
    if PIPELINE_DATA_KEY in state:
        return {k: v for k, v in state.items() if k != PIPELINE_DATA_KEY}
    return dict(state)


def check_patch(patch: object, where: str) -> Mapping[str, Any] | None:
    """Validate a step's return value; raise StepError naming the bad key path and type."""
    if patch is None:
        return None
    if not isinstance(patch, Mapping):
        raise StepError(
            f"{where} returned {type(patch).__name__}; a step must return a dict patch or None"
        )
    if type(patch) is not dict:
        patch = dict(patch)
    if PIPELINE_DATA_KEY in patch:
        raise StepError(
            f"{where} wrote the reserved key {PIPELINE_DATA_KEY!r}; "
            "it belongs to the runtime, use another key"
        )
    problem = find_unstorable(patch, allow_delete=True)
    if problem is not None:
        path, bad = problem
        raise StepError(
            f"{where} returned a value that cannot be stored at {path!r}: {describe(bad)}"
        )
    return patch


def show(value: object, limit: int = 80) -> str:
    """A short, always-printable text for a value from untrusted input (in messages)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = repr(value)
        except ValueError:  # e.g. an int too long to print
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(bad: object) -> str:
    """Why a value cannot be stored, and what to use instead."""
    if isinstance(bad, _TooDeep):
        return f"nested deeper than {MAX_DEPTH} levels; flatten it"
    if isinstance(bad, _BadText):
        return "a string that is not valid UTF-8 (lone surrogates); encode it as bytes"
    if isinstance(bad, _dt.datetime):
        if bad.utcoffset() is None:
            return "a naive datetime; give it a tzinfo (e.g. datetime.timezone.utc)"
        return "a datetime whose UTC offset is not whole minutes; convert it to UTC"
    if isinstance(bad, Decimal):
        return f"Decimal {bad} is not finite; store it as a string"
    return (
        f"{type(bad).__name__} (allowed: dict with str keys, list, str, int, float, bool, "
        "None, bytes, datetime, Decimal)"
    )


MAX_DEPTH = 150
"""How deeply state may nest; the decoder refuses deeper data, so commits refuse it too."""


def find_unstorable(
    value: Any, *, allow_delete: bool = False, path: str = "", depth: int = 0
) -> tuple[str, Any] | None:
    """The first (key path, value) in a tree that is not a storable state value, or None.

    `allow_delete` accepts `DELETE` as a dict value (patches), never inside a list.
    """
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            return (path or "<root>", _TooDeep())
        if kind is dict:
            for key, item in value.items():
                at = f"{path}.{show(key)}" if path else show(key)
                if type(key) is not str:
                    return (at, key)
                if not key.isascii() and not is_utf8(key):
                    return (at, _BadText())
                if item is DELETE and allow_delete:
                    continue
                found = find_unstorable(item, allow_delete=allow_delete, path=at, depth=depth + 1)
                if found is not None:
                    return found
            return None
        for index, item in enumerate(value):
            found = find_unstorable(item, path=f"{path}[{index}]", depth=depth + 1)
            if found is not None:
                return found
        return None
    if kind in LEAF_TYPES:
        if kind is _dt.datetime and not _storable_datetime(value):
            return (path or "<root>", value)
        if kind is Decimal and not value.is_finite():
            return (path or "<root>", value)
        if kind is str and not value.isascii() and not is_utf8(value):
            return (path or "<root>", _BadText())
        return None
    return (path or "<root>", value)


def _storable_datetime(value: _dt.datetime) -> bool:
    """Aware, with a UTC offset of whole minutes (what CBOR datetime text can carry)."""
    offset = value.utcoffset()
    return offset is not None and offset.seconds % 60 == 0 and offset.microseconds == 0


class _TooDeep:
    """Stands for a subtree nested deeper than MAX_DEPTH in a `find_unstorable` answer."""


class _BadText:
    """Stands for a string with lone surrogates (not encodable as UTF-8)."""
