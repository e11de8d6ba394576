"""`stageline runs`: which runs to list (newest first, --since, --limit) and how to print them.

On a terminal the table is drawn by `rich`, with coloured statuses unless NO_COLOR is set;
anywhere else (a pipe, a file) it is plain text, so scripts and `grep` see no escapes.
`rich` is imported only then, so `stageline --help` does not pay for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from stageline import _cli_format as fmt

if TYPE_CHECKING:
    from stageline.core.store import RunInfo, Store


def select(
    store: Store,
    status: str | None,
    pipeline_id: str | None,
    since: float | None,
    limit: int,
) -> tuple[list[RunInfo], int]:
    """The runs to list, newest first, and how many more matched past `limit` (0: all)."""
    found = store.list_runs(status=status, pipeline_id=pipeline_id)
    if since is not None:
        cutoff = time.time() - since
        found = [info for info in found if _created(info) >= cutoff]
    found.sort(key=_created, reverse=True)
    if limit <= 0 or len(found) <= limit:
        return found, 0
    return found[:limit], len(found) - limit


def _created(info: RunInfo) -> float:
    """When the run was created (its last update for a row too damaged to tell)."""
    moment = info.created_at or info.updated_at
    return moment.timestamp() if moment is not None else 0.0


def more_line(more: int, limit: int) -> str:
    runs = "run" if more == 1 else "runs"
    return f"... {more} more {runs} not shown (--limit {limit}); raise --limit to see them"


def print_runs(found: list[RunInfo], more: int, limit: int, as_json: bool) -> None:
    if as_json:
        for info in found:
            click.echo(fmt.dumps(fmt.run_dict(info, full=False)))
        if more:
            click.echo(more_line(more, limit), err=True)
        return
    rows = [fmt.run_row(info) for info in found]
    if sys.stdout.isatty():
        rich_table(fmt.RUN_HEADERS, rows, status_column=2)
    else:
        click.echo(fmt.table(fmt.RUN_HEADERS, rows, status_column=2))
    if more:
        click.echo(more_line(more, limit))


def rich_table(headers: Sequence[str], rows: Sequence[Sequence[str]], status_column: int) -> None:
    """The table drawn by rich on a terminal (colours off with NO_COLOR)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        cells = [Text(cell) for cell in row]
        colour = fmt.COLOURS.get(row[status_column])
        if colour and not fmt.no_color():
            cells[status_column].stylize(colour)
        table.add_row(*cells)
    Console(no_color=fmt.no_color(), highlight=False).print(table)
