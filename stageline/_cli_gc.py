"""`stageline gc`: delete finished runs last updated longer ago than a duration.

The work is `stageline._retention` (shared with `serve --retain`); this module reads the
options, picks the cutoff by the CLI's clock and prints what was (or, with --dry-run,
would be) deleted.
"""

from __future__ import annotations

import json

import click

from stageline import _cli_times as times
from stageline import _retention as retention
from stageline._cli_errors import UserError
from stageline._cli_mailbox import CLOCK
from stageline._cli_options import open_store


def collect(
    store_url: str | None, older_than: float, statuses: str | None, dry_run: bool, as_json: bool
) -> None:
    """Delete (or count, with `dry_run`) the runs in `statuses` last updated more than
    `older_than` seconds ago."""
    try:
        wanted = retention.parse_statuses(statuses)
    except retention.RetentionError as exc:
        raise UserError(str(exc)) from None
    store = open_store(store_url)
    try:
        cutoff = CLOCK.wall() - older_than
        if dry_run:
            count = retention.count_finished(store, cutoff, wanted)
        else:
            count = retention.delete_finished(store, cutoff, wanted)
    finally:
        store.close()
    if as_json:
        fields = {"runs": count, "dry_run": dry_run, "statuses": list(wanted)}
        click.echo(json.dumps({**fields, "updated_before": times.iso(cutoff)}))
        return
    before = times.local(cutoff)
    verb = "would delete" if dry_run else "deleted"
    runs = "run" if count == 1 else "runs"
    click.echo(f"{verb} {count} {runs} ({', '.join(wanted)}) last updated before {before}")
