"""The floor under durable commits: bare SQLite transactions, as many as a durable sample.

An information row of `durable_sqlite_stage_commit`: what the disk charges for
stageline's commits with no runtime around them.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from stageline.stores.sqlite import WAL_AUTOCHECKPOINT_PAGES

from .settings import DURABLE_STAGES, Settings
from .timing import per, scratch_dir

FLOOR_STATE = b"\xa1an\x05" * 4  # about the size of the bench's encoded state and records


def sqlite_commit_floor(s: Settings) -> float:
    """The disk's price of stageline's durable commits, with no runtime around them.

    Bare SQLite transactions on a new file, set up as SqliteStore sets its own (WAL,
    synchronous=FULL, its autocheckpoint), each writing what a stage commit writes (one
    run row updated, two journal rows inserted), as many as a durable sample makes
    (20 stage commits plus 2 per run: its record and its start); time per stage.
    """
    commits = s.durable_runs * (DURABLE_STAGES + 2)
    with scratch_dir(s) as tmp:
        db = floor_db(tmp / "floor.db")
        try:
            start = time.perf_counter()
            for i in range(commits):
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "UPDATE runs SET state = ?, version = version + 1 WHERE run_id = 'r'",
                    (FLOOR_STATE,),
                )
                db.executemany(
                    "INSERT INTO events VALUES ('r', ?, ?)",
                    ((2 * i, FLOOR_STATE), (2 * i + 1, FLOOR_STATE)),
                )
                db.execute("COMMIT")
            return per(start, s.durable_runs * DURABLE_STAGES)
        finally:
            db.close()


def floor_db(path: Path) -> sqlite3.Connection:
    """A new SQLite file set up as SqliteStore sets its own, with one run row."""
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL"):
        db.execute(f"PRAGMA {pragma}")
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, state BLOB, version INT)")
    db.execute(
        "CREATE TABLE events (run_id TEXT, seq INT, data BLOB, "
        "PRIMARY KEY (run_id, seq)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO runs VALUES ('r', x'00', 0)")
    return db
