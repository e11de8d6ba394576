"""The store's mailbox (spec section 12): post, claim exactly once, answer, read back.

Runs on every store through the `store` fixture; the SQLite schema migrations (from
versions 1 and 2) have their own test at the end.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter

import pytest

from stageline.core import lifecycle
from stageline.core.codec import encode
from stageline.core.errors import StoreError
from stageline.core.mailbox import (
    CLAIMED,
    DONE,
    FAILED,
    PENDING,
    Request,
    status_problem,
)
from stageline.stores import SqliteStore
from stageline.stores.sqlite import MIGRATIONS, SCHEMA_VERSION

pytestmark = pytest.mark.timeout(60)


def request(n: int, kind: str = "resume", **fields) -> Request:
    return Request(
        request_id=f"req-{n}", kind=kind, run_id=f"run-{n}", posted_at=float(n), **fields
    )


def test_a_posted_request_reads_back_pending(store):
    store.post_request(request(1, "start", pipeline_id="p", args={"entry": "a", "state": {"x": 1}}))
    got = store.get_request("req-1")
    assert (got.kind, got.run_id, got.pipeline_id, got.status) == ("start", "run-1", "p", PENDING)
    assert got.args == {"entry": "a", "state": {"x": 1}}
    assert not got.answered


def test_posting_an_id_twice_is_refused(store):
    store.post_request(request(1))
    with pytest.raises(StoreError, match="req-1"):
        store.post_request(request(1))


def test_claims_come_oldest_first_and_only_once(store):
    for n in range(5):
        store.post_request(request(n))
    first = store.claim_requests("d1", limit=3)
    assert [r.request_id for r in first] == ["req-0", "req-1", "req-2"]
    assert all(r.status == CLAIMED and r.claimed_by == "d1" for r in first)
    assert [r.request_id for r in store.claim_requests("d2")] == ["req-3", "req-4"]
    assert store.claim_requests("d1") == []


def test_racing_claimers_each_request_exactly_once(store):
    total, claimers = 60, 6
    for n in range(total):
        store.post_request(request(n))
    barrier = threading.Barrier(claimers)
    got: dict[str, list[str]] = {}

    def claim(name: str) -> None:
        barrier.wait(timeout=10)
        mine = got.setdefault(name, [])
        while batch := store.claim_requests(name, limit=2):
            mine.extend(r.request_id for r in batch)

    threads = [threading.Thread(target=claim, args=(f"d{i}",)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    counts = Counter(rid for ids in got.values() for rid in ids)
    assert len(counts) == total and set(counts.values()) == {1}
    owners = {store.get_request(rid).claimed_by for rid in counts}
    assert owners <= set(got)


def test_answers_are_read_by_the_sender(store):
    store.post_request(request(1))
    store.post_request(request(2))
    store.claim_requests("d")
    store.answer_request("req-1")
    store.answer_request("req-2", "run 'run-2' is not paused (status failed); cannot resume it")
    ok, bad = store.get_request("req-1"), store.get_request("req-2")
    assert (ok.status, ok.answer, ok.answered) == (DONE, None, True)
    assert bad.status == FAILED and "not paused (status failed)" in bad.answer
    assert bad.answered_at is not None


def test_unknown_requests_are_store_errors(store):
    with pytest.raises(StoreError, match="nope"):
        store.get_request("nope")
    with pytest.raises(StoreError, match="nope"):
        store.answer_request("nope")


def test_the_mailbox_version_moves_on_post_and_answer(store):
    v0 = store.mailbox_version()
    store.post_request(request(1))
    v1 = store.mailbox_version()
    assert v1 != v0
    store.claim_requests("d")
    store.answer_request("req-1")
    assert store.mailbox_version() != v1


def test_sqlite_mailbox_version_sees_other_connections(tmp_path):
    reader, writer = SqliteStore(tmp_path / "m.db"), SqliteStore(tmp_path / "m.db")
    try:
        before = reader.mailbox_version()
        writer.post_request(request(1))
        assert reader.mailbox_version() != before
        assert [r.request_id for r in reader.claim_requests("d")] == ["req-1"]
    finally:
        reader.close()
        writer.close()


def test_a_request_needs_a_known_kind_and_a_start_a_pipeline():
    with pytest.raises(ValueError, match="kind"):
        request(1, "restart")
    with pytest.raises(ValueError, match="pipeline_id"):
        request(1, "start")


@pytest.mark.parametrize(
    ("kind", "status", "problem"),
    [
        ("resume", lifecycle.PAUSED, None),
        ("resume", lifecycle.FAILED, "run 'r' is not paused (status failed); cannot resume it"),
        ("retry", lifecycle.FAILED, None),
        ("retry", lifecycle.QUARANTINED, None),
        ("retry", lifecycle.SUCCEEDED, "run 'r' is not failed or quarantined (status succeeded)"),
        ("abort", lifecycle.RUNNING, None),
        ("abort", lifecycle.ABORTED, "is not pending, running or paused (status aborted)"),
        ("start", lifecycle.PENDING, None),
    ],
)
def test_status_problems_name_the_run_and_its_status(kind, status, problem):
    found = status_problem(kind, "r", status)
    assert found == problem if problem is None else problem in found


@pytest.mark.parametrize("old_version", [1, 2])
def test_an_older_sqlite_file_is_migrated_and_keeps_its_runs(tmp_path, old_version):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE stageline_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for version in range(1, old_version + 1):
        for statement in MIGRATIONS[version]:
            db.execute(statement)
    db.execute("INSERT INTO stageline_meta VALUES ('schema_version', ?)", (str(old_version),))
    db.execute(
        "INSERT INTO runs (run_id, pipeline_id, pipeline_version, status, stage, state, "
        "version, last_seq, stage_runs, created_at, updated_at) "
        "VALUES ('r1', 'p', 1, 'paused', 's', ?, 3, 4, 1, 0, 0)",
        (encode({"x": 1}),),
    )
    db.commit()
    db.close()

    store = SqliteStore(path)
    try:
        run = store.get_run("r1")
        assert (run.status, run.state, run.stage) == ("paused", {"x": 1}, "s")
        store.post_request(request(1))
        assert [r.request_id for r in store.claim_requests("d")] == ["req-1"]
    finally:
        store.close()
    row = sqlite3.connect(path).execute("SELECT value FROM stageline_meta").fetchone()
    assert int(row[0]) == SCHEMA_VERSION == 9


def test_pruning_deletes_only_requests_answered_before_the_time(store):
    for n in range(4):
        store.post_request(request(n))
    claimed = store.claim_requests("d1", limit=3)
    assert [r.request_id for r in claimed] == ["req-0", "req-1", "req-2"]
    store.answer_request("req-0")
    store.answer_request("req-1", "it failed")
    assert store.prune_requests(answered_before=0.0) == 0  # none was answered that early
    assert store.get_request("req-0").status == DONE
    assert store.prune_requests(answered_before=time.time() + 60) == 2
    for gone in ("req-0", "req-1"):
        with pytest.raises(StoreError, match=gone):
            store.get_request(gone)
    assert store.get_request("req-2").status == CLAIMED  # claimed, not answered: kept
    assert store.get_request("req-3").status == PENDING
    assert store.prune_requests(answered_before=time.time() + 60) == 0


def test_pruning_a_long_backlog_goes_in_batches(store, monkeypatch):
    from stageline.stores import _common

    monkeypatch.setattr(_common, "PRUNE_BATCH", 2)  # 7 answered: batches of 2, 2, 2, 1
    for n in range(8):
        store.post_request(request(n))
    for claimed in store.claim_requests("d1", limit=7):
        store.answer_request(claimed.request_id)
    assert store.prune_requests(answered_before=time.time() + 60) == 7
    assert [store.get_request("req-7").status] == [PENDING]
    assert store.prune_requests(answered_before=time.time() + 60) == 0
