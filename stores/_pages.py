"""A page of runs, newest first, by keyset: its cursor, its limit, and the SQL stores' query.

A page is ordered by `created_at`, then `run_id` (byte order), both descending; the next
page starts right after the last row of this one, found by an index range, never by
OFFSET, so page 2,000 costs what page 1 does. A cursor is opaque text for its caller:
`c1.` and the URL-safe base64 (unpadded) of the JSON `[created_at, run_id]` of the last
row returned, so it survives a URL unquoted and a float keeps every bit (JSON writes its
shortest exact repr). A SQL store reads the position straight from the row, before the
row is decoded: a damaged row (listed with status CORRUPT, as `list_runs` lists it) still
ends a page, and the next one goes on after it.

Indexes (schema migration 9 of both SQL stores): `(created_at, run_id)`, `(status,
created_at, run_id)` and `(pipeline_id, created_at, run_id)`: a page with no filter or one
reads one backward index range. With both filters the planner walks the index of the
rarer one and skips the rows of the other's other values (no fourth index: every index
is written by every new run, and by every status change for the status one).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

from stageline.core.store import RunInfo

from ._common import RUN_COLUMNS
from ._rows import listed_info

MAX_PAGE: Final = 1000
"""The largest `limit` a page takes."""
_PREFIX: Final = "c1."

Position = tuple[float | str, str]
"""Where a page starts: right after the run with this (created_at, run_id)."""
Page = tuple[list[RunInfo], str | None]


def checked_limit(limit: object) -> int:
    """`limit` if it is an int from 1 to MAX_PAGE; ValueError saying so otherwise."""
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
    return limit


def cursor_after(created_at: Any, run_id: Any) -> str:
    """The cursor of the page that starts right after the run (created_at, run_id)."""
    when = created_at if isinstance(created_at, int | float | str) else str(created_at)
    text = json.dumps([when, run_id if isinstance(run_id, str) else str(run_id)])
    return _PREFIX + base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode(
        "ascii"
    ).rstrip("=")


def cursor_position(before: object, *, text_times: bool = False) -> Position:
    """The (created_at, run_id) a cursor from `cursor_after` holds; ValueError naming the
    problem for anything else. `text_times`: the store may have given a text time (SQLite
    lists a hand-edited, damaged row as it is)."""
    if not isinstance(before, str) or not before.startswith(_PREFIX):
        raise _not_ours(before, f"it does not start with {_PREFIX!r}")
    body = before[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        value = json.loads(raw.decode("utf-8", "surrogatepass"))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _not_ours(before, f"it cannot be decoded ({exc})") from None
    times = (int, float, str) if text_times else (int, float)
    if (
        type(value) is not list
        or len(value) != 2
        or not isinstance(value[0], times)
        or isinstance(value[0], bool)
        or not isinstance(value[1], str)
    ):
        raise _not_ours(before, "it does not hold a creation time and a run id")
    try:
        when = value[0] if isinstance(value[0], str) else float(value[0])
    except OverflowError:
        raise _not_ours(before, "its creation time is out of range") from None
    return when, value[1]


def _not_ours(before: object, problem: str) -> ValueError:
    shown = before if not isinstance(before, str) or len(before) <= 80 else before[:77] + "..."
    return ValueError(
        f"cursor {shown!r} is not one this store gave; {problem}. Pass the `next` of an "
        "earlier page as it was returned, or no cursor for the first page"
    )


def page_of(
    items: Sequence[Any],
    limit: int,
    position: Callable[[Any], tuple[Any, Any]],
    info: Callable[[Any], RunInfo],
) -> Page:
    """The page made of the first `limit` of `items` (fetched `limit + 1`, newest first),
    and the cursor after its last item if more follow. `position(item)` is its
    (created_at, run_id); `info(item)` its RunInfo."""
    shown = items[:limit]
    more = len(items) > limit
    return [info(item) for item in shown], cursor_after(*position(shown[-1])) if more else None


def page_query(
    status: str | None, pipeline_id: str | None, after: Position | None, limit: int, run_id: str
) -> tuple[str, tuple[Any, ...]]:
    """The statement (`{s}.` before the table, `?` for a parameter) reading one page plus
    one row; `run_id` is how the store orders run ids (PostgreSQL: `COLLATE "C"`)."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("status", status), ("pipeline_id", pipeline_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if after is not None:
        where.append(f"(created_at, {run_id}) < (?, ?)")
        params.extend(after)
    text = f"SELECT {RUN_COLUMNS} FROM {{s}}.runs"
    if where:
        text += " WHERE " + " AND ".join(where)
    text += f" ORDER BY created_at DESC, {run_id} DESC LIMIT ?"
    return text, (*params, limit + 1)


class SqlPages:
    """`page_runs` of a SQL store, on SqlFleet's `_fleet_rows` hook (stores/_fleet.py)."""

    max_state_bytes: int
    RUN_ID_ORDER: ClassVar[str] = "run_id"
    """How the store's SQL orders run ids (PostgreSQL: in byte order, `COLLATE "C"`)."""
    TEXT_TIMES: ClassVar[bool] = False
    """Whether a damaged row may hold a text creation time (SQLite keeps any type)."""

    def _fleet_rows(self, what: str, statement: str, params: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    def _never_stored(self, text: str | None) -> bool:
        """Whether no run can have this text (PostgreSQL: a NUL character, too long)."""
        return False

    def page_runs(
        self,
        status: str | None = None,
        pipeline_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> Page:
        """Runs newest first, at most `limit`, and the cursor of the next page (None when
        this page is the last); see `Store.page_runs`. A damaged row is listed with
        status CORRUPT, as `list_runs` lists it."""
        size = checked_limit(limit)
        after = None if before is None else cursor_position(before, text_times=self.TEXT_TIMES)
        if after is not None and self._never_stored(after[1]):
            raise _not_ours(before, "its run id is not one this store can hold")
        if self._never_stored(status) or self._never_stored(pipeline_id):
            return [], None
        statement, params = page_query(status, pipeline_id, after, size, self.RUN_ID_ORDER)
        rows = self._fleet_rows("listing a page of runs", statement, params)
        return page_of(
            rows,
            size,
            lambda row: (row[11], row[0]),
            lambda row: listed_info(row, self.max_state_bytes),
        )


__all__ = ["MAX_PAGE", "SqlPages", "checked_limit", "cursor_after", "cursor_position", "page_of"]
