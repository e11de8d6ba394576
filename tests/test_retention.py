"""Retention in the stores (SPEC 16): `delete_finished` deletes finished runs and their
journals in bounded batches, one transaction each, never another status; `reclaim_space`
gives the space back; files and schemas from before gain the new columns when opened.

The 100,000-run tests fill the store with raw SQL (executemany on SQLite, COPY on
PostgreSQL), then delete it batch by batch while another thread keeps committing stages
to a live run of the same store.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import drop_schema

from stageline.core import lifecycle
from stageline.core.codec import encode
from stageline.core.errors import RunNotFound
from stageline.core.events import Event, PathNode
from stageline.core.store import Commit, RunRecord
from stageline.stores import PostgresStore, SqliteStore
from stageline.stores import sqlite as sqlite_module
from stageline.stores.postgres import MIGRATIONS as PG_MIGRATIONS

pytestmark = pytest.mark.timeout(60)

FINISHED = sorted(lifecycle.FINISHED)
KEPT = ["pending", "queued", "running", "paused", "sleeping", "quarantined"]
RUN_COLUMNS = (
    "run_id, pipeline_id, pipeline_version, status, stage, state, checkpoint, error, "
    "version, last_seq, stage_runs, created_at, updated_at, owner, lease_until"
)
MANY = 100_000
BATCH = 1000


def record(run_id: str, status: str = "running", updated_at: float | None = None) -> RunRecord:
    now = time.time() if updated_at is None else updated_at
    return RunRecord(run_id, "p", 1, status, {"n": 0}, "s1", created_at=now, updated_at=now)


def stage_commit(
    run: RunRecord, status: str = "running", updated_at: float | None = None
) -> Commit:
    seq = run.last_seq + 1
    event = Event("stage:success", run.run_id, (PathNode("p", "s1"),), seq, 0.0, stage_id="s1")
    return Commit(
        run_id=run.run_id,
        expected_version=run.version,
        status=status,
        stage="s1",
        state={"n": run.state["n"] + 1},
        last_seq=seq,
        stage_runs=run.stage_runs + 1,
        updated_at=time.time() if updated_at is None else updated_at,
        events=(event,),
    )


def ended(store: Any, run_id: str, status: str, updated_at: float) -> None:
    """A run with a journal, ended in `status` at `updated_at`."""
    store.create_run(record(run_id))
    store.commit(stage_commit(store.load_run(run_id), status, updated_at))


def test_only_finished_runs_updated_before_the_time_go_with_their_journals(store):
    for status in [*FINISHED, *KEPT]:
        ended(store, f"old-{status}", status, 100.0)
        ended(store, f"new-{status}", status, 10_000.0)
    assert store.delete_finished(1_000.0, lifecycle.FINISHED) == len(FINISHED)
    for status in FINISHED:
        with pytest.raises(RunNotFound):
            store.get_run(f"old-{status}")
        with pytest.raises(RunNotFound):
            store.read_events(f"old-{status}")
    left = {r.run_id: r.status for r in store.list_runs()}
    assert left == {
        **{f"old-{s}": s for s in KEPT},
        **{f"new-{s}": s for s in [*FINISHED, *KEPT]},
    }
    assert [e.seq for e in store.read_events("new-succeeded")] == [1]
    assert store.delete_finished(1_000.0, lifecycle.FINISHED) == 0
    assert store.delete_finished(20_000.0, ["failed"]) == 1  # only the statuses given
    assert store.delete_finished(20_000.0, []) == 0


def test_a_batch_deletes_at_most_its_limit(store):
    for n in range(5):
        ended(store, f"r{n}", "succeeded", 100.0)
    assert [store.delete_finished(1_000.0, ["succeeded"], limit=2) for _ in range(4)] == [
        2,
        2,
        1,
        0,
    ]


@pytest.mark.parametrize(
    "statuses", [["succeeded", "paused"], ["quarantined"], ["running"], ["corrupt"]]
)
def test_statuses_that_are_not_finished_are_refused(store, statuses):
    ended(store, "r1", "paused", 100.0)
    with pytest.raises(ValueError, match=r"deletes only finished runs .* not"):
        store.delete_finished(1_000.0, statuses)
    with pytest.raises(ValueError, match="limit of at least 1"):
        store.delete_finished(1_000.0, ["succeeded"], limit=0)
    assert store.get_run("r1").status == "paused"
    store.reclaim_space()  # every store has it (MemoryStore: nothing to do)


# ----------------------------------------------------------------- 100,000 runs


def finished_rows(n: int, updated_at: float) -> Iterator[tuple[Any, ...]]:
    state = encode({"order": "x" * 100, "lines": list(range(20))})
    for i in range(n):
        yield (f"done-{i:06d}", "p", 1, FINISHED[i % 4], "s1", state, None, None,
               3, 2, 1, updated_at, updated_at, None, None)  # fmt: skip


def event_rows(n: int) -> Iterator[tuple[Any, ...]]:
    data = encode({"t": 0.0, "path": [["p", "s1"]], "results": {"order": "x" * 60}})
    for i in range(n):
        yield (f"done-{i:06d}", 1, "pipeline:start", data)
        yield (f"done-{i:06d}", 2, "pipeline:success", data)


def kept_rows() -> list[tuple[Any, ...]]:
    state = encode({"kept": True})
    return [
        (f"kept-{status}", "p", 1, status, "s1", state, None, None, 1, 0, 0, 1.0, 1.0, None, None)
        for status in KEPT
    ]


class LiveWriter:
    """A thread committing stage after stage to the running run "live" (made if absent)
    until stopped."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.commits = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        if not any(r.run_id == "live" for r in store.list_runs(status="running")):
            store.create_run(record("live"))
        self.first = store.get_run("live").state["n"]
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.store.commit(stage_commit(self.store.load_run("live")))
                self.commits += 1
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.stop.wait(0.002)  # pacing, so the deleter gets the store too

    def __enter__(self) -> LiveWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def delete_all(store: Any, writer: LiveWriter) -> tuple[list[int], float]:
    """Delete every finished run, BATCH at a time, while `writer` commits; the batch
    sizes and the seconds it took."""
    started = time.monotonic()
    batches: list[int] = []
    with writer:
        while not batches or batches[-1] == BATCH:
            batches.append(store.delete_finished(time.time(), lifecycle.FINISHED, limit=BATCH))
            assert batches[-1] <= BATCH
        during = writer.commits
    assert writer.errors == [] and during > 0  # the live run went on meanwhile
    assert store.get_run("live").state == {"n": writer.first + writer.commits}
    return batches, time.monotonic() - started


def sqlite_pages(path: str) -> tuple[int, int]:
    """The file's pages, and how many of them are free."""
    db = sqlite3.connect(path)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        return pages, db.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        db.close()


def fill_sqlite(path: str, n: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany(
        f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * 15)})",
        finished_rows(n, 1_000.0),
    )
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", event_rows(n))
    db.executemany(f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * 15)})", kept_rows())
    db.execute("COMMIT")
    db.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sqlite_deletes_100k_runs_in_batches_and_the_file_shrinks(tmp_path, capsys):
    store = SqliteStore(tmp_path / "big.db")
    fill_sqlite(store.path, MANY)
    filled_pages, _ = sqlite_pages(store.path)
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filled_size = os.path.getsize(store.path)
    batches, seconds = delete_all(store, LiveWriter(store))
    assert sum(batches) == MANY and len(batches) == MANY // BATCH + 1
    _, free_before = sqlite_pages(store.path)
    started = time.monotonic()
    store.reclaim_space()
    reclaim_seconds = time.monotonic() - started
    pages, free = sqlite_pages(store.path)
    size = os.path.getsize(store.path)
    assert free_before > filled_pages // 2 and free == 0
    assert pages < filled_pages // 20 and size < filled_size // 20
    assert os.path.getsize(f"{store.path}-wal") == 0  # the WAL is emptied too
    left = {r.run_id: r.status for r in store.list_runs()}
    assert left == {**{f"kept-{s}": s for s in KEPT}, "live": "running"}
    assert store._db.execute(
        "SELECT count(*) FROM events WHERE run_id LIKE 'done-%'"
    ).fetchone() == (0,)
    with capsys.disabled():
        print(f"\n  sqlite: {MANY} runs deleted in {len(batches)} batches in {seconds:.1f} s; "
              f"file {filled_size / 1e6:.1f} MB -> {size / 1e6:.2f} MB "
              f"(reclaim_space {reclaim_seconds:.2f} s)")  # fmt: skip
    store.close()


def test_an_old_sqlite_file_gains_the_new_columns_and_one_vacuum_switches_it(tmp_path):
    """A file made before (schema version 3, auto_vacuum NONE) opens, migrates (the abort
    flag works), and its first reclaim_space is a full VACUUM that switches it to
    incremental; the next ones are incremental."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE stageline_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for version in (1, 2, 3):
        for statement in sqlite_module.MIGRATIONS[version]:
            db.execute(statement)
    db.execute("INSERT INTO stageline_meta VALUES ('schema_version', '3')")
    db.commit()
    db.close()
    fill_sqlite(str(path), 20_000)
    store = SqliteStore(path)
    assert store._db.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    assert store.request_abort("kept-running", "old file") is True
    assert store.abort_requests(["kept-running"]) == {"kept-running": "old file"}
    filled, _ = sqlite_pages(store.path)
    assert store.delete_finished(time.time(), lifecycle.FINISHED, limit=20_000) == 20_000
    store.reclaim_space()
    assert store._db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental now
    pages, free = sqlite_pages(store.path)
    assert free == 0 and pages < filled // 10
    for n in range(2_000):
        store.create_run(record(f"again-{n}", "succeeded", 100.0))
    assert store.delete_finished(1_000.0, ["succeeded"], limit=5_000) == 2_000
    _, free = sqlite_pages(store.path)
    assert free > 0
    store.reclaim_space()
    assert sqlite_pages(store.path)[1] == 0
    store.close()
    meta = sqlite3.connect(path).execute("SELECT value FROM stageline_meta").fetchone()
    assert meta == (str(sqlite_module.SCHEMA_VERSION),)


def test_a_new_sqlite_file_is_made_for_incremental_vacuum(tmp_path):
    store = SqliteStore(tmp_path / "new.db")
    assert store._db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    store.close()


# ----------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_big(pg_dsn: str) -> Iterator[tuple[PostgresStore, Any, str]]:
    """A store on a schema of this test's own, an admin connection, and the schema."""
    import psycopg

    schema = f"retention_{uuid.uuid4().hex[:10]}"
    store = PostgresStore(pg_dsn, schema=schema, max_size=4)
    admin = psycopg.connect(pg_dsn, autocommit=True)
    yield store, admin, schema
    admin.close()
    store.close()
    drop_schema(pg_dsn, schema)


def fill_postgres(admin: Any, schema: str, n: int) -> None:
    with admin.cursor() as cursor:
        with cursor.copy(f'COPY "{schema}".runs ({RUN_COLUMNS}) FROM STDIN') as copy:
            for row in finished_rows(n, 1_000.0):
                copy.write_row(row)
        with cursor.copy(f'COPY "{schema}".events (run_id, seq, name, data) FROM STDIN') as copy:
            for row in event_rows(n):
                copy.write_row(row)


def pg_sizes(admin: Any, schema: str) -> tuple[int, int]:
    """Bytes of the runs and events tables: their heaps alone, and in all (indexes and
    TOAST included: pg_total_relation_size)."""
    tables = (f'"{schema}".runs', f'"{schema}".events')
    heaps = admin.execute("SELECT pg_relation_size(%s) + pg_relation_size(%s)", tables)
    total = admin.execute("SELECT pg_total_relation_size(%s) + pg_total_relation_size(%s)", tables)
    return int(heaps.fetchone()[0]), int(total.fetchone()[0])


def delete_cycle(store: Any, admin: Any, schema: str) -> tuple[tuple[int, int], str]:
    """Fill with MANY finished runs, delete them all, reclaim; the sizes when filled."""
    fill_postgres(admin, schema, MANY)
    filled = pg_sizes(admin, schema)
    batches, seconds = delete_all(store, LiveWriter(store))
    assert sum(batches) == MANY and max(batches) == BATCH
    for table in ("runs", "events"):
        query = f'SELECT count(*) FROM "{schema}".{table} WHERE run_id LIKE %s'
        assert admin.execute(query, ("done-%",)).fetchone() == (0,)
    store.reclaim_space()
    return filled, f"{filled[1] / 1e6:.1f} MB, {len(batches)} batches in {seconds:.1f} s"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_postgres_deletes_100k_runs_in_batches_and_the_space_is_reused(pg_big, capsys):
    """Four fill/delete cycles of 100,000 finished runs (200,000 journal rows).

    PostgreSQL files never shrink without VACUUM FULL; what must hold is that deleted
    space is reused, so the tables do not grow by a fill's size per cycle (without reuse,
    four fills would take four times the first). Measured: the heaps (pg_relation_size of
    runs and events) are the same size at every fill (within 1%: the live run's journal
    grows meanwhile), as reclaim_space's plain VACUUM made their pages free for the next
    fill. The totals (pg_total_relation_size, indexes and TOAST included) grow by up to
    about the indexes' size and stay under 1.5 times the first fill's (seen: 84, 104-107,
    104-114, 114 MB): a B-tree page that VACUUM empties is recycled only by a later
    VACUUM, once every transaction that could see it has ended, so when that happens
    depends on the other sessions of the server too.
    """
    store, admin, schema = pg_big
    insert = f'INSERT INTO "{schema}".runs ({RUN_COLUMNS}) VALUES ({", ".join(["%s"] * 15)})'
    with admin.cursor() as cursor:
        cursor.executemany(insert, kept_rows())
    cycles = [delete_cycle(store, admin, schema) for _ in range(4)]
    heaps = [heap for (heap, _), _ in cycles]
    totals = [total for (_, total), _ in cycles]
    assert all(b < a * 1.01 for a, b in itertools.pairwise(heaps)), heaps  # reused at once
    assert max(totals) < totals[0] * 1.5, totals  # not a fill more per cycle
    left = {r.run_id: r.status for r in store.list_runs()}
    assert left == {**{f"kept-{s}": s for s in KEPT}, "live": "running"}
    with capsys.disabled():
        print("\n  postgres fills: " + "; ".join(report for _, report in cycles))


def test_a_version_3_postgres_schema_gains_the_abort_columns(pg_dsn):
    import psycopg

    schema = f"retention_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
            admin.execute(
                f'CREATE TABLE "{schema}".stageline_meta (key text PRIMARY KEY, value text)'
            )
            for version in (1, 2, 3):
                for statement in PG_MIGRATIONS[version]:
                    admin.execute(statement.replace("{s}", f'"{schema}"'))
            admin.execute(f"INSERT INTO \"{schema}\".stageline_meta VALUES ('schema_version', '3')")
            admin.execute(
                f'INSERT INTO "{schema}".runs ({RUN_COLUMNS}) VALUES ({", ".join(["%s"] * 15)})',
                kept_rows()[2],  # a running run written by a version-3 store
            )
        store = PostgresStore(pg_dsn, schema=schema)
        try:
            assert store.request_abort("kept-running", "old schema") is True
            assert store.abort_requests(["kept-running"]) == {"kept-running": "old schema"}
        finally:
            store.close()
        with psycopg.connect(pg_dsn) as admin:
            meta = admin.execute(f'SELECT value FROM "{schema}".stageline_meta').fetchone()
        assert meta == (str(max(PG_MIGRATIONS)),)
    finally:
        drop_schema(pg_dsn, schema)
