"""Stores read time from their Clock: a ManualClock dates a request's answer, and pruning
by the clock's time removes exactly the requests answered before it.

Runs on every store (memory, sqlite, postgres), each made with `clock=`, and through
`open_store(url, clock=...)`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import STORE_KINDS, empty_pg_store

from stageline.core.clock import ManualClock, SystemClock
from stageline.core.errors import StoreError
from stageline.core.mailbox import CLAIMED, DONE, FAILED, PENDING, Request
from stageline.stores import MemoryStore, PostgresStore, SqliteStore
from stageline.stores.url import open_store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path, clock: ManualClock) -> Iterator[object]:
    """Every store stageline ships, made with the test's ManualClock."""
    if request.param == "memory":
        s: object = MemoryStore(clock=clock)
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "runs.db", clock=clock)
    else:
        dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        empty_pg_store(dsn, schema).close()
        s = PostgresStore(dsn, schema=schema, clock=clock)
    yield s
    s.close()  # type: ignore[attr-defined]


def mail(n: int, clock: ManualClock) -> Request:
    return Request(request_id=f"req-{n}", kind="resume", run_id=f"run-{n}", posted_at=clock.wall())


def answer_now(store, n: int, error: str | None = None) -> None:
    """Post request n, claim it and answer it (at the clock's current time)."""
    store.post_request(mail(n, store.clock))
    assert [r.request_id for r in store.claim_requests("d1")] == [f"req-{n}"]
    store.answer_request(f"req-{n}", error)


def test_the_store_keeps_the_clock_it_was_given(store, clock):
    assert store.clock is clock


def test_the_answered_time_is_the_clocks_wall_time(store, clock):
    answer_now(store, 1)
    first = store.get_request("req-1")
    assert (first.status, first.answered_at) == (DONE, clock.wall())
    clock.advance(90.0)
    answer_now(store, 2, "no such run")
    second = store.get_request("req-2")
    assert (second.status, second.answered_at) == (FAILED, clock.wall())
    assert second.answered_at == first.answered_at + 90.0


def test_pruning_by_the_clock_removes_exactly_the_earlier_answers(store, clock):
    answer_now(store, 1)
    clock.advance(10.0)
    answer_now(store, 2, "failed on purpose")
    middle = clock.wall()
    clock.advance(10.0)
    answer_now(store, 3)  # answered at the clock's time: not before it
    store.post_request(mail(4, clock))
    store.post_request(mail(5, clock))
    assert [r.request_id for r in store.claim_requests("d1", limit=1)] == ["req-4"]

    assert store.prune_requests(answered_before=middle) == 1
    with pytest.raises(StoreError, match="req-1"):
        store.get_request("req-1")
    assert store.get_request("req-2").answered_at == middle

    assert store.prune_requests(answered_before=clock.wall()) == 1
    with pytest.raises(StoreError, match="req-2"):
        store.get_request("req-2")
    assert store.get_request("req-3").answered_at == clock.wall()
    assert store.get_request("req-4").status == CLAIMED  # unanswered: never pruned
    assert store.get_request("req-5").status == PENDING

    clock.advance(0.5)
    assert store.prune_requests(answered_before=clock.wall()) == 1
    assert store.prune_requests(answered_before=clock.wall()) == 0


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_open_store_passes_the_clock_on(store_url, clock):
    store = open_store(store_url, clock=clock)
    try:
        assert store.clock is clock  # type: ignore[attr-defined]
        answer_now(store, 1)
        assert store.get_request("req-1").answered_at == clock.wall()
    finally:
        store.close()


def test_without_a_clock_a_store_uses_the_system_clock(store_url):
    store = open_store(store_url)
    try:
        assert isinstance(store.clock, SystemClock)  # type: ignore[attr-defined]
    finally:
        store.close()
