"""`stageline limits`: each limit and key with runs, how many hold a slot and how many wait.

It reads the store's `limit_usage(now)` (SPEC section 20), by the CLI's clock: a run
holds a slot while it is "running" with a lease not run out, and waits while "queued".
A limit (and key) with neither is not listed. The store keeps no limit's `max_running`
(each pipeline declares its own): the table shows counts only. JSON lines for scripts
(`key` is "" for a limit without a key function), a table for people ("-" for no key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import click

from stageline import _cli_format as fmt
from stageline._cli_mailbox import CLOCK

if TYPE_CHECKING:
    from stageline.core.store import Store

LIMIT_HEADERS: Final = ("LIMIT", "KEY", "RUNNING", "QUEUED")
NO_LIMIT: Final = "no limit has runs in this store"


def list_limits(store: Store, as_json: bool) -> None:
    """Print every (limit, key) with a run holding or waiting, by limit then key."""
    usage = store.limit_usage(CLOCK.wall())
    if as_json:
        for row in usage:
            click.echo(fmt.dumps(limit_dict(row)))
    elif not usage:
        click.echo(NO_LIMIT)
    else:
        click.echo(_table([limit_row(row) for row in usage]))


def limit_dict(row: dict[str, Any]) -> dict[str, Any]:
    """A (limit, key)'s line for JSON."""
    return {
        "limit": row["limit"],
        "key": row["key"],
        "running": row["running"],
        "queued": row["queued"],
    }


def limit_row(row: dict[str, Any]) -> tuple[str, ...]:
    """A (limit, key)'s line for people."""
    return (row["limit"], row["key"] or "-", str(row["running"]), str(row["queued"]))


def _table(rows: list[tuple[str, ...]]) -> str:
    """A plain table, the counts right-aligned (no status column to colour)."""
    widths = [max(len(r[i]) for r in [LIMIT_HEADERS, *rows]) for i in range(len(LIMIT_HEADERS))]

    def line(cells: tuple[str, ...]) -> str:
        name, key, running, queued = cells
        parts = (name.ljust(widths[0]), key.ljust(widths[1]),
                 running.rjust(widths[2]), queued.rjust(widths[3]))  # fmt: skip
        return "  ".join(parts).rstrip()

    return "\n".join([line(LIMIT_HEADERS), *(line(row) for row in rows)])
