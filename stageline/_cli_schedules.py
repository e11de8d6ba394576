"""`stageline schedules`: the store's schedules, with their last and next fire times.

It reads the store's `list_schedules()`: every schedule a daemon serving the store has
recorded (`stageline serve` saves each Schedule of its APP at start, and each firing
moves its last fire time forward). JSON lines for scripts (times in ISO-8601 UTC),
a table for people (local times, and how long ago or how soon).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import click

from stageline import _cli_format as fmt

if TYPE_CHECKING:
    from stageline.core.store import Store

SCHEDULE_HEADERS: Final = (
    "SCHEDULE", "PIPELINE", "SPEC", "OVERLAP", "LAST FIRE", "LAST RUN", "NEXT FIRE",
)  # fmt: skip
NO_SCHEDULE: Final = "no schedule is recorded in this store (stageline serve records its APP's)"


def list_schedules(store: Store, as_json: bool) -> None:
    """Print the store's schedules, by id."""
    schedules = store.list_schedules()
    if as_json:
        for schedule in schedules:
            click.echo(fmt.dumps(schedule_dict(schedule)))
    elif not schedules:
        click.echo(NO_SCHEDULE)
    else:
        rows = [schedule_row(schedule) for schedule in schedules]
        click.echo(fmt.table(SCHEDULE_HEADERS, rows, status_column=3))


def schedule_dict(schedule: dict[str, Any]) -> dict[str, Any]:
    """A schedule's row for JSON: its times in ISO-8601 UTC."""
    times = ("last_fire", "next_fire", "updated_at")
    return {**schedule, **{name: fmt.iso(schedule[name]) for name in times}}


def schedule_row(schedule: dict[str, Any]) -> tuple[str, ...]:
    """A schedule's line for people: local times, and how long ago or how soon."""
    return (
        schedule["schedule_id"],
        schedule["pipeline_id"],
        schedule["spec"],
        schedule["overlap"],
        fmt.human_time(schedule["last_fire"]),
        schedule["last_run_id"] or "-",
        fmt.human_time(schedule["next_fire"]),
    )
