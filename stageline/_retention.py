"""Retention: deleting finished runs (and their journals) last updated before a cutoff.

Shared by `stageline gc` and `stageline serve --retain`. Only finished statuses can be
deleted (succeeded, failed, aborted, expired); paused, sleeping, running, pending, queued
and quarantined runs never are. The store deletes in batches, one transaction each
(`store.delete_finished(..., limit=BATCH)`, until a batch comes back short), so a long
backlog never holds the store's write lock for long; then `store.reclaim_space()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from stageline.core import lifecycle

if TYPE_CHECKING:
    from stageline.core.store import Store

BATCH: Final = 1000
"""Runs deleted per transaction."""

DELETABLE: Final = tuple(s for s in lifecycle.STATUSES if s in lifecycle.FINISHED)
"""The statuses retention may delete, in lifecycle order (the default of `gc --status`)."""


class RetentionError(ValueError):
    """A status list naming something retention never deletes; the message says why."""


def parse_statuses(text: str | None) -> tuple[str, ...]:
    """The statuses of "succeeded,failed"; DELETABLE when not given.

    RetentionError for an unknown word or a status that is not finished.
    """
    if text is None:
        return DELETABLE
    words = [word.strip().lower() for word in text.split(",") if word.strip()]
    if not words:
        raise RetentionError(f"--status names no status; give some of: {', '.join(DELETABLE)}")
    for word in words:
        if word not in lifecycle.STATUSES:
            raise RetentionError(
                f"--status: unknown status {word!r}; give some of: {', '.join(DELETABLE)}"
            )
        if word not in DELETABLE:
            raise RetentionError(
                f"--status: {word} runs are never deleted; only finished runs are "
                f"({', '.join(DELETABLE)})"
            )
    return tuple(dict.fromkeys(words))


def delete_finished(store: Store, updated_before: float, statuses: Iterable[str]) -> int:
    """Delete the runs in `statuses` last updated before `updated_before` (wall-clock
    seconds), batch by batch, then give their space back; how many were deleted."""
    wanted = tuple(statuses)
    deleted = 0
    while True:
        count: int = store.delete_finished(updated_before, wanted, limit=BATCH)
        deleted += count
        if count < BATCH:
            break
    if deleted:
        store.reclaim_space()
    return deleted


def count_finished(store: Store, updated_before: float, statuses: Iterable[str]) -> int:
    """How many runs `delete_finished` would delete now (a dry run: reads only)."""
    found = 0
    for status in statuses:
        found += sum(
            1
            for info in store.list_runs(status=status)
            if info.updated_at.timestamp() < updated_before
        )
    return found
