"""The `schedules` table both SQL stores keep: each served Schedule and its last firing.

Schema migration 6 creates it. A daemon serving a `Schedule` records it here (its
pipeline, spec and policies), and each firing moves `last_fire` forward (never back), so
`stageline schedules` lists every schedule of the store with its last and next fire
time, and a daemon that restarts knows what it missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from stageline.core.clock import Clock

TABLE: Final = """CREATE TABLE {s}.schedules (
    schedule_id text PRIMARY KEY, pipeline_id text NOT NULL, spec text NOT NULL,
    overlap text NOT NULL, catchup_window double precision NOT NULL,
    last_fire double precision, last_run_id text, next_fire double precision,
    updated_at double precision NOT NULL
)"""
"""Schema migration 6 of both SQL stores (SQLite reads the types by affinity)."""

SCHEDULE_FIELDS: Final = (
    "schedule_id", "pipeline_id", "spec", "overlap", "catchup_window",
    "last_fire", "last_run_id", "next_fire", "updated_at",
)  # fmt: skip
"""The columns of a schedule's row, as `list_schedules` gives them."""
DEFINITION_FIELDS: Final = SCHEDULE_FIELDS[:5]
"""What `save_schedule` needs (with `next_fire` optional)."""

_SAVE: Final = (
    f"INSERT INTO {{s}}.schedules ({', '.join(DEFINITION_FIELDS)}, next_fire, updated_at) "
    f"VALUES ({', '.join('?' for _ in DEFINITION_FIELDS)}, ?, ?) "
    "ON CONFLICT (schedule_id) DO UPDATE SET "
    f"{', '.join(f'{name} = excluded.{name}' for name in DEFINITION_FIELDS[1:])}, "
    "next_fire = COALESCE(excluded.next_fire, {s}.schedules.next_fire), "
    "updated_at = excluded.updated_at "
    "RETURNING schedule_id"
)
_FIRED: Final = (
    "UPDATE {s}.schedules SET last_fire = ?, last_run_id = COALESCE(?, last_run_id), "
    "next_fire = ?, updated_at = ? "
    "WHERE schedule_id = ? AND (last_fire IS NULL OR last_fire < ?) RETURNING schedule_id"
)
_LAST_RUN: Final = (
    "UPDATE {s}.schedules SET last_run_id = ?, updated_at = ? WHERE schedule_id = ? "
    "RETURNING schedule_id"
)
_LIST: Final = f"SELECT {', '.join(SCHEDULE_FIELDS)} FROM {{s}}.schedules ORDER BY schedule_id"


def definition_values(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """A schedule's definition, in DEFINITION_FIELDS order then `next_fire`; ValueError
    naming a missing field."""
    missing = [name for name in DEFINITION_FIELDS if name not in entry]
    if missing:
        raise ValueError(f"a schedule needs {', '.join(missing)}")
    next_fire = entry.get("next_fire")
    return (
        str(entry["schedule_id"]), str(entry["pipeline_id"]), str(entry["spec"]),
        str(entry["overlap"]), float(entry["catchup_window"]),
        None if next_fire is None else float(next_fire),
    )  # fmt: skip


def schedule_from_row(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(SCHEDULE_FIELDS, row, strict=True))


class SqlSchedules:
    """The schedule methods of a SQL store, on SqlFleet's `_fleet_rows` hook (stores/_fleet.py)."""

    clock: Clock  # the store's: dates each write (`updated_at`)

    def _fleet_rows(self, what: str, statement: str, params: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    def save_schedule(self, entry: Mapping[str, Any]) -> None:
        """Write, or replace, a schedule's definition (see Store.save_schedule)."""
        values = definition_values(entry)
        what = f"saving schedule {values[0]!r}"
        self._fleet_rows(what, _SAVE, (*values, float(self.clock.wall())))

    def mark_fired(
        self, schedule_id: str, fire_time: float, run_id: str | None, next_fire: float | None
    ) -> bool:
        """Move the schedule's `last_fire` forward to `fire_time` (see Store.mark_fired)."""
        params = (float(fire_time), run_id, next_fire, float(self.clock.wall()), schedule_id,
                  float(fire_time))  # fmt: skip
        what = f"marking schedule {schedule_id!r} fired"
        if self._fleet_rows(what, _FIRED, params):
            return True
        if run_id is not None:  # a buffered fire time started late: it is the last run now
            self._fleet_rows(what, _LAST_RUN, (run_id, float(self.clock.wall()), schedule_id))
        return False

    def list_schedules(self) -> list[dict[str, Any]]:
        """Every saved schedule, by id."""
        rows = self._fleet_rows("reading schedules", _LIST, ())
        return [schedule_from_row(row) for row in rows]


__all__ = ["DEFINITION_FIELDS", "SCHEDULE_FIELDS", "TABLE", "SqlSchedules"]
