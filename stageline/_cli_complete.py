"""Shell completion of run ids and pipeline ids, read from the store `--store` names.

click calls these while the shell asks for completions (`_STAGELINE_COMPLETE`, see
docs/cli.md). The store comes from `--store` on the line being completed, else
$STAGELINE_STORE; it is opened without creating anything, and any failure (no store, a
typo, a server down) completes nothing rather than printing an error into the shell.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click
    from click.shell_completion import CompletionItem

    from stageline.core.store import RunInfo

LIMIT = 200
"""At most this many completions (newest runs first)."""


def _runs(ctx: click.Context) -> list[RunInfo]:
    url = ctx.params.get("store_url") or os.environ.get("STAGELINE_STORE")
    if not url:
        return []
    try:
        from stageline.stores.url import open_store

        found = open_store(url, create=False).list_runs()
    except Exception:  # completion fails silently: never an error in the shell
        return []
    return sorted(found, key=lambda info: str(info.created_at or ""), reverse=True)


def run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The run ids in the store that start with `incomplete` (with their status as help)."""
    from click.shell_completion import CompletionItem

    items = [
        CompletionItem(info.run_id, help=f"{info.pipeline_id} {info.status}")
        for info in _runs(ctx)
        if info.run_id.startswith(incomplete)
    ]
    return items[:LIMIT]


def pipeline_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The pipeline ids the store's runs name that start with `incomplete`."""
    from click.shell_completion import CompletionItem

    ids = {info.pipeline_id for info in _runs(ctx) if info.pipeline_id}
    return [CompletionItem(pid) for pid in sorted(ids) if pid.startswith(incomplete)][:LIMIT]
