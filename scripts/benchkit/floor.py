"""The floor under durable commits: bare transactions, as many as a durable sample makes.

The `floor` column of the durable cases: what the store charges for stageline's commits
with no runtime around them. Each commit writes what a stage commit writes (one run row
updated, two journal rows inserted). SQLite: plain `sqlite3` on a new file set up as
SqliteStore sets its own, one writer (SQLite has one at a time). PostgreSQL: plain
`psycopg`, synchronous_commit=on, in a scratch schema; for the throughput case the commits
are spread over 10 connections on 10 threads (each its own run row), so the server can
flush several at once: 10 is PostgresStore's default pool, and of 1, 4, 10 and 50
connections the fastest on the 2-CPU development VM (50 threads contend for the GIL).
"""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stageline.stores.sqlite import WAL_AUTOCHECKPOINT_PAGES

from .pg import dsn_in, scratch_schema
from .settings import DURABLE_STAGES, THROUGHPUT_STAGES, Settings
from .timing import per, scratch_dir

PG_FLOOR_CONNECTIONS = 10  # PostgresStore's default pool; the fastest of 1, 4, 10, 50 here
FLOOR_STATE = b"\xa1an\x05" * 4  # about the size of the bench's encoded state and records


def sqlite_commit_floor(s: Settings) -> float:
    """The floor of durable_sqlite_stage_commit: 20 stage commits plus 2 per run (its
    record and its start), as many runs as a sample; time per stage."""
    commits = s.durable_runs * (DURABLE_STAGES + 2)
    return sqlite_commits(s, commits) / (s.durable_runs * DURABLE_STAGES)


def sqlite_throughput_floor(s: Settings) -> float:
    """The floor of throughput_durable_sqlite: 12 commits a run; time per run."""
    runs = s.durable_throughput_runs
    return sqlite_commits(s, runs * (THROUGHPUT_STAGES + 2)) / runs


def sqlite_commits(s: Settings, commits: int) -> float:
    """Microseconds for `commits` bare commits on a new file."""
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
            return per(start, 1)
        finally:
            db.close()


def pg_commit_floor(s: Settings) -> float:
    """The floor of durable_step_postgres, on one connection; time per stage."""
    commits = s.durable_runs * (DURABLE_STAGES + 2)
    return pg_commits(commits, 1) / (s.durable_runs * DURABLE_STAGES)


def pg_throughput_floor(s: Settings) -> float:
    """The floor of throughput_durable_postgres, on PG_FLOOR_CONNECTIONS; per run."""
    runs = s.durable_throughput_runs
    return pg_commits(runs * (THROUGHPUT_STAGES + 2), PG_FLOOR_CONNECTIONS) / runs


def pg_commits(commits: int, workers: int) -> float:
    """Microseconds for `commits` bare commits spread over `workers` connections."""
    import psycopg

    with scratch_schema("floor_bench") as schema:
        with psycopg.connect(dsn_in(schema), autocommit=True) as conn:
            conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, state BYTEA, version INT)")
            conn.execute(
                "CREATE TABLE events (run_id TEXT, seq INT, data BYTEA, PRIMARY KEY (run_id, seq))"
            )
            for w in range(workers):
                conn.execute("INSERT INTO runs VALUES (%s, '\\x00', 0)", (f"r{w}",))
        conns = [psycopg.connect(dsn_in(schema)) for _ in range(workers)]
        try:
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                share = [commits // workers + (w < commits % workers) for w in range(workers)]
                list(pool.map(pg_worker, conns, range(workers), share))
            return per(start, 1)
        finally:
            for conn in conns:
                conn.close()


def pg_worker(conn: Any, w: int, commits: int) -> None:
    run = f"r{w}"
    for i in range(commits):
        with conn.transaction():
            conn.execute(
                "UPDATE runs SET state = %s, version = version + 1 WHERE run_id = %s",
                (FLOOR_STATE, run),
            )
            conn.cursor().executemany(
                "INSERT INTO events VALUES (%s, %s, %s)",
                ((run, 2 * i, FLOOR_STATE), (run, 2 * i + 1, FLOOR_STATE)),
            )


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
