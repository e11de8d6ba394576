"""What the HTTP console reads from every store: pages of runs, newest first, by cursor, and
the journal version a watcher waits on to stream each run's journal live (SPEC 12, 17)."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from test_store_fleet import GARBAGE, record, stage_commit

from stageline import Pipeline, PipelineFactory, Stage, Step
from stageline.core import lifecycle
from stageline.stores import MemoryStore, PostgresStore, SqliteStore

PATIENCE = 5.0  # seconds a waiter may take before the test calls it stuck


def make_runs(store: Any, count: int, **fields: Any) -> list[str]:
    """`count` runs, four to each creation time (ties broken by run id), ids not in order."""
    ids = [f"r{(n * 7) % count:03d}" for n in range(count)]
    for n, run_id in enumerate(ids):
        store.create_run(record(run_id, created_at=1000.0 + n // 4, **fields))
    return ids


def newest_first(store: Any, run_ids: list[str]) -> list[str]:
    runs = {r.run_id: r for r in store.list_runs()}
    return sorted(run_ids, key=lambda r: (runs[r].created_at, r), reverse=True)


def all_pages(store: Any, limit: int, **filters: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page, cursor = store.page_runs(limit=limit, before=cursor, **filters)
        pages.append([r.run_id for r in page])
        if cursor is None:
            return pages


# ------------------------------------------------------------------------------- pages


@pytest.mark.parametrize(("count", "limit"), [(23, 5), (20, 5), (3, 50), (8, 1)])
def test_pages_visit_every_run_once_newest_first(store, count, limit):
    ids = make_runs(store, count)
    pages = all_pages(store, limit)
    assert [len(page) for page in pages[:-1]] == [limit] * (len(pages) - 1)
    assert 1 <= len(pages[-1]) <= limit  # the page that ends exactly on a run still ends
    assert [run_id for page in pages for run_id in page] == newest_first(store, ids)


def test_runs_created_at_the_same_time_are_ordered_by_run_id(store):
    for run_id in ("b", "a", "c", "é", "B"):
        store.create_run(record(run_id, created_at=5.0))
    store.create_run(record("z", created_at=4.0))
    pages = all_pages(store, 2)
    assert pages == [["é", "c"], ["b", "a"], ["B", "z"]]


def test_a_page_carries_each_runs_info(store):
    store.create_run(record("r1", "paused", created_at=1.0))
    [info], cursor = store.page_runs()
    assert cursor is None
    assert (info.run_id, info.pipeline_id, info.status, info.state) == (
        "r1",
        "p",
        "paused",
        {"n": 1},
    )
    assert info.created_at is not None and info.created_at.timestamp() == 1.0


def test_an_empty_store_has_one_empty_page(store):
    assert store.page_runs() == ([], None)
    assert store.page_runs(status="running", pipeline_id="p") == ([], None)


def test_filters_combine_and_page(store):
    for n in range(30):
        status = ("running", "succeeded", "failed")[n % 3]
        pipeline = ("p", "q")[n % 2]
        run = replace(record(f"r{n:02d}", status, created_at=float(n)), pipeline_id=pipeline)
        store.create_run(run)
    runs = store.list_runs()
    for filters in ({"status": "running"}, {"pipeline_id": "q"},
                    {"status": "failed", "pipeline_id": "p"}, {"status": "aborted"}):  # fmt: skip
        wanted = [r.run_id for r in reversed(runs)
                  if all(getattr(r, key) == value for key, value in filters.items())]  # fmt: skip
        pages = all_pages(store, 3, **filters)
        assert [run_id for page in pages for run_id in page] == wanted, filters


def test_a_cursor_still_works_after_its_run_is_gone(store):
    make_runs(store, 6, status="succeeded")
    _, cursor = store.page_runs(limit=2)
    assert store.delete_finished(time.time() + 60, ["succeeded"], limit=6) == 6
    store.create_run(record("new", created_at=999.0))  # older than the cursor's run
    assert store.page_runs(limit=2, before=cursor) == (store.page_runs(limit=2)[0], None)


def _encoded(value: object) -> str:
    return "c1." + base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


BAD_CURSORS = {
    "empty": "",
    "no prefix": "1000.0:r1",
    "not base64": "c1.!!!!",
    "not json": "c1." + base64.urlsafe_b64encode(b"\xff\x00").decode(),
    "one value": _encoded([1.0]),
    "a mapping": _encoded({"created_at": 1.0, "run_id": "r1"}),
    "a boolean time": _encoded([True, "r1"]),
    "a numeric run id": _encoded([1.0, 7]),
    "a time out of range": _encoded([10**400, "r1"]),
    "not text": 12,
}


@pytest.mark.parametrize("cursor", list(BAD_CURSORS.values()), ids=list(BAD_CURSORS))
def test_a_cursor_this_store_did_not_give_is_a_value_error(store, cursor):
    make_runs(store, 3)
    with pytest.raises(ValueError, match=r"cursor .* is not one this store gave; it"):
        store.page_runs(before=cursor)


def test_a_text_time_is_refused_where_no_row_can_hold_one(store):
    cursor = _encoded(["yesterday", "r1"])
    if isinstance(store, SqliteStore):  # a hand-edited row may hold one: it pages on
        assert store.page_runs(before=cursor) == ([], None)
    else:
        with pytest.raises(ValueError, match="does not hold a creation time and a run id"):
            store.page_runs(before=cursor)


@pytest.mark.parametrize("limit", [0, -1, 1001, 2.5, True, "50", None])
def test_a_limit_outside_1_to_1000_is_a_value_error(store, limit):
    with pytest.raises(ValueError, match=r"limit must be an integer from 1 to 1000, got"):
        store.page_runs(limit=limit)
    assert store.page_runs(limit=1000) == ([], None)


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_a_damaged_row_is_listed_and_paged_past(sql_store, garbage):
    store, raw = sql_store
    for n in (1, 2, 3):
        store.create_run(record(f"r{n}", created_at=float(n)))
    raw.execute("UPDATE {t}runs SET state = ? WHERE run_id = 'r2'", (GARBAGE[garbage],))
    pages = [store.page_runs(limit=1)]
    while pages[-1][1] is not None:
        pages.append(store.page_runs(limit=1, before=pages[-1][1]))
    listed = [(r.run_id, r.status) for page, _ in pages for r in page]
    assert listed == [("r3", "running"), ("r2", lifecycle.CORRUPT), ("r1", "running")]
    damaged = pages[1][0][0]
    assert damaged.error["kind"] == "corrupt" and "'r2'" in damaged.error["message"]
    assert [r.run_id for r in store.page_runs(status="running")[0]] == ["r3", "r2", "r1"]


def test_sqlite_pages_past_a_row_whose_creation_time_is_text(tmp_path):
    from test_store_fleet import Raw

    store = SqliteStore(tmp_path / "runs.db")
    for n in (1, 2, 3):
        store.create_run(record(f"r{n}", created_at=float(n)))
    raw = Raw.sqlite(store.path)
    raw.execute("UPDATE runs SET created_at = 'yesterday' WHERE run_id = 'r2'")
    raw.close()
    assert all_pages(store, 1) == [["r2"], ["r3"], ["r1"]]  # SQLite sorts text after numbers
    assert store.page_runs()[0][0].status == lifecycle.CORRUPT
    store.close()


# ------------------------------------------------------------------------ journal version


def _other(store: Any, request: pytest.FixtureRequest) -> Any:
    """A second store object on the same database as `store` (another connection)."""
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path)
    if isinstance(store, PostgresStore):
        return PostgresStore(request.getfixturevalue("pg_dsn"), schema=store.schema)
    pytest.skip("a MemoryStore's runs live in its one object")


def _waiting(store: Any, seen: int) -> tuple[threading.Thread, dict[str, float]]:
    """A thread in `store.wait_journal(seen, PATIENCE)`; its answer and time go in the dict."""
    answer: dict[str, float] = {}

    def wait() -> None:
        started = time.monotonic()
        answer["version"] = store.wait_journal(seen, PATIENCE)
        answer["took"] = time.monotonic() - started

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, answer


def test_journal_version_moves_with_this_stores_commits(store):
    store.create_run(record("r1"))
    before = store.journal_version()
    store.commit(stage_commit(store.load_run("r1")))
    after = store.journal_version()
    assert after > before
    assert store.journal_version() >= after  # never back


def test_wait_journal_wakes_for_a_commit_of_this_store(store):
    store.create_run(record("r1"))
    seen = store.journal_version()
    thread, answer = _waiting(store, seen)
    store.commit(stage_commit(store.load_run("r1")))
    thread.join(PATIENCE + 1)
    assert answer["version"] != seen and answer["took"] < PATIENCE - 1
    assert [e.seq for e in store.read_events("r1")] == [1]


def test_wait_journal_wakes_for_a_commit_of_another_store_object(store, request):
    other = _other(store, request)
    try:
        other.create_run(record("r1"))
        seen = store.journal_version()
        thread, answer = _waiting(store, seen)
        other.commit(stage_commit(other.load_run("r1")))
        thread.join(PATIENCE + 1)
        assert answer["version"] != seen and answer["took"] < PATIENCE - 1
        assert store.journal_version() != seen
        assert [e.seq for e in store.read_events("r1")] == [1]
    finally:
        other.close()


def test_wait_journal_returns_after_its_timeout_when_nothing_happens(store):
    seen = store.journal_version()
    started = time.monotonic()
    assert store.wait_journal(seen, 0.05) == seen
    assert 0.04 <= time.monotonic() - started < PATIENCE
    assert store.wait_journal(seen, 0) == seen


def test_a_pipeline_run_moves_the_journal_version(store):
    pipeline = Pipeline("p", [Stage("s1", 1, steps=[Step("w", lambda state, ctx: {"x": 1})])])
    seen = store.journal_version()
    result = PipelineFactory(pipeline, store=store).prepare(run_id="run-1").run(timeout=10)
    assert result.ok
    assert store.wait_journal(seen, PATIENCE) != seen
    names = [e.name for e in store.read_events("run-1")]
    assert names[0] == "pipeline:start" and names[-1] == "pipeline:success"


def test_a_memory_store_counts_only_commits_with_events():
    store = MemoryStore()
    store.create_run(record("r1"))
    seen = store.journal_version()
    store.commit(stage_commit(store.load_run("r1"), events=()))
    assert store.journal_version() == seen
    store.commit(stage_commit(store.load_run("r1")))
    assert store.journal_version() == seen + 1
