"""The `schedules` table both SQL stores keep: each served Schedule and its last firing.

Schema migration 6 creates it. A daemon serving a `Schedule` records it here (its
pipeline, spec and policies), and each firing moves `last_fire` forward (never back), so
`stageline schedules` lists every schedule of the store with its last and next fire
time, and a daemon that restarts knows what it missed.
"""

from __future__ import annotations

from typing import Final

TABLE: Final = """CREATE TABLE {s}.schedules (
    schedule_id text PRIMARY KEY, pipeline_id text NOT NULL, spec text NOT NULL,
    overlap text NOT NULL, catchup_window double precision NOT NULL,
    last_fire double precision, last_run_id text, next_fire double precision,
    updated_at double precision NOT NULL
)"""
"""Schema migration 6 of both SQL stores (SQLite reads the types by affinity)."""
