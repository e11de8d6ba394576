"""The daemon reads time from its registry's clock: a ManualClock drives pruning and recovery.

No test sleeps: the manual clock moves only when advanced, and the serving thread is
followed through events it sets (a mailbox poll, a recovery pass), each waited on with a
timeout.
"""

from __future__ import annotations

import itertools
import queue
import threading

import pytest

from stageline import ManualClock, Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.core.clock import iso_utc
from stageline.core.errors import StagelineError
from stageline.core.mailbox import DONE, FAILED, PENDING, Request
from stageline.daemon import Daemon, DaemonOptions, bind_factories
from stageline.stores import MemoryStore

pytestmark = pytest.mark.timeout(30)

KEEP = 15.0
RECOVER_EVERY = 30.0
quick = Pipeline("quick", [Stage("one", order=1, steps=[Step("one", lambda s, c: {"n": 1})])])


class WatchedStore(MemoryStore):
    """A MemoryStore on the test's clock (it dates answers by it) that tells the test when
    the daemon polls its mailbox, when a request is answered, and each pruning cutoff."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.polled = threading.Event()
        self.answered = threading.Event()
        self.cutoffs: list[float] = []

    def answer_request(self, request_id: str, error: str | None = None) -> None:
        super().answer_request(request_id, error)
        self.answered.set()

    def prune_requests(self, answered_before: float) -> int:
        self.cutoffs.append(answered_before)
        return super().prune_requests(answered_before)

    def mailbox_version(self) -> int:
        self.polled.set()
        return super().mailbox_version()


class CountingDaemon(Daemon):
    """A Daemon that reports each recovery pass with the clock's time when it began."""

    recoveries: queue.Queue[float]

    def recover(self, *, quiet: bool = False) -> None:
        self.recoveries.put(self.clock.monotonic())
        super().recover(quiet=quiet)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def daemon(clock):
    store = WatchedStore(clock)
    options = DaemonOptions(
        poll_interval=0.001, idle_claim=3600.0, recover_every=RECOVER_EVERY, keep_answered=KEEP
    )
    with Registry(clock=clock) as registry:
        factories = bind_factories([PipelineFactory(quick)], store, registry)
        served = CountingDaemon(factories, store, registry, options)
        served.recoveries = queue.Queue()
        yield served


_ids = itertools.count()


def answered_now(daemon: Daemon) -> str:
    """Post a request the daemon answers at once (abort of a run that does not exist)."""
    request_id = f"req-{next(_ids)}"
    posted = daemon.clock.wall()
    daemon.store.post_request(Request(request_id, "abort", f"ghost-{request_id}", posted))
    assert daemon.poll_once() == 1
    assert daemon.store.get_request(request_id).status == FAILED
    return request_id


def is_kept(store: WatchedStore, request_id: str) -> bool:
    try:
        store.get_request(request_id)
    except StagelineError:  # the store's "no such request"
        return False
    return True


def test_pruning_removes_exactly_the_answers_older_than_keep_by_the_clock(daemon, clock):
    start = clock.wall()
    first = answered_now(daemon)  # answered at start
    clock.advance(10.0)
    second = answered_now(daemon)  # answered at start + 10
    waiting = "req-waiting"
    daemon.store.post_request(Request(waiting, "abort", "ghost", start))  # never claimed
    clock.advance(15.0)  # now start + 25: the cutoff is start + 10

    daemon.prune()
    assert daemon.store.cutoffs == [start + 25.0 - KEEP]
    assert not is_kept(daemon.store, first)  # 25 s old: older than KEEP
    assert is_kept(daemon.store, second)  # exactly KEEP old: not older, kept

    clock.advance(0.5)
    daemon.prune()
    assert daemon.store.cutoffs[-1] == start + 10.5
    assert not is_kept(daemon.store, second)
    assert daemon.store.get_request(waiting).status == PENDING  # unanswered: never pruned


def next_polls(store: WatchedStore, count: int = 2) -> None:
    """Wait until the serving loop has polled `count` more times: the second poll's pass
    began after this call, so it saw the clock as it is now."""
    for _ in range(count):
        store.polled.clear()
        assert store.polled.wait(10), "the daemon stopped polling"


def test_recovery_runs_when_the_clock_passes_the_recovery_period(daemon, clock):
    began = clock.monotonic()
    old = answered_now(daemon)  # answered at `began`, before the daemon serves
    stop = threading.Event()
    thread = threading.Thread(target=daemon.serve, args=(stop,))
    thread.start()
    try:
        next_polls(daemon.store)  # serving: the recovery period counts from `began`
        clock.advance(RECOVER_EVERY - 0.5)
        next_polls(daemon.store)
        assert daemon.recoveries.empty()  # not yet due by the clock, however long it took

        young = "req-young"
        daemon.store.answered.clear()
        daemon.store.post_request(Request(young, "abort", "ghost-young", clock.wall()))
        assert daemon.store.answered.wait(10)  # answered by the serving daemon, at +29.5
        clock.advance(0.5)
        assert daemon.recoveries.get(timeout=10) == began + RECOVER_EVERY
        next_polls(daemon.store)  # the pass (recover, then prune) is over
        assert daemon.store.cutoffs == [clock.wall() - KEEP]
        assert not is_kept(daemon.store, old)  # 30 s old by the clock
        assert is_kept(daemon.store, young)  # 0.5 s old

        clock.advance(RECOVER_EVERY)
        assert daemon.recoveries.get(timeout=10) == began + 2 * RECOVER_EVERY
        next_polls(daemon.store)
        assert not is_kept(daemon.store, young)  # 30.5 s old: pruned by the second pass
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert daemon.recoveries.empty()


class RecordingLog:
    """Stands in for the daemon's structlog logger: keeps (event, fields) of each line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def bind(self, **fields) -> RecordingLog:
        return self

    def info(self, event: str, **fields) -> None:
        self.lines.append((event, fields))

    warning = error = exception = info


def test_a_request_latency_is_measured_on_the_clock(daemon, clock):
    daemon.log = RecordingLog()
    started: queue.Queue = queue.Queue()
    daemon.on_start = started.put
    daemon.store.post_request(Request("req-start", "start", "r1", clock.wall(), "quick"))
    clock.advance(0.25)
    assert daemon.poll_once() == 1
    assert daemon.store.get_request("req-start").status == DONE
    assert ("request:done", {"latency": 0.25}) in daemon.log.lines
    assert started.get(timeout=10).wait(10).status == "succeeded"


def test_without_keep_answered_nothing_is_pruned(daemon, clock):
    request_id = answered_now(daemon)
    daemon.options = DaemonOptions(keep_answered=None)
    clock.advance(10 * KEEP)
    daemon.prune()
    assert daemon.store.cutoffs == [] and is_kept(daemon.store, request_id)


def test_a_store_error_while_pruning_is_logged_not_raised(daemon, clock, caplog):
    def broken(answered_before: float) -> int:
        raise StagelineError("the store is gone")

    daemon.store.prune_requests = broken
    with caplog.at_level("ERROR", logger="stageline"):
        daemon.prune()
    assert any("prune_failed" in r.getMessage() for r in caplog.records)


paused_pipeline = Pipeline(
    "waits",
    [
        Stage("ask", order=1, steps=[Step("ask", lambda s, c: {"asked": True})],
              router=lambda s, r: Pause("done", timeout=3600)),
        Stage("done", order=2, steps=[Step("done", lambda s, c: {"done": True})]),
    ],
)  # fmt: skip


def test_retention_deletes_finished_runs_older_than_retain_by_the_clock(clock):
    store = WatchedStore(clock)
    options = DaemonOptions(recover_every=RECOVER_EVERY, keep_answered=None, retain=100.0)
    with Registry(clock=clock) as registry:
        factories = bind_factories(
            [PipelineFactory(quick), PipelineFactory(paused_pipeline)], store, registry
        )
        daemon = Daemon(factories, store, registry, options)
        daemon.log = RecordingLog()
        old = factories["quick"].prepare(run_id="old").run(timeout=10)
        waiting = factories["waits"].prepare(run_id="waiting").run(timeout=10)
        assert (old.status, waiting.status) == ("succeeded", "paused")
        clock.advance(60.0)
        young = factories["quick"].prepare(run_id="young").run(timeout=10)
        assert young.status == "succeeded"

        clock.advance(40.0)  # "old" is exactly 100 s old: kept
        daemon.retain()
        assert {r.run_id for r in store.list_runs()} == {"old", "waiting", "young"}
        clock.advance(0.5)
        daemon.retain()
        assert {r.run_id for r in store.list_runs()} == {"waiting", "young"}
        assert ("daemon:deleted_runs", {"runs": 1, "updated_before": iso_utc(clock.wall() - 100.0)}) in daemon.log.lines
        clock.advance(1000.0)  # a paused run is never deleted, however old
        daemon.retain()
        assert {r.run_id for r in store.list_runs()} == {"waiting"}
        daemon.options = DaemonOptions(retain=None)
        assert daemon.retain() is None


def test_a_store_error_while_retaining_is_logged_not_raised(daemon):
    def broken(*args, **kwargs) -> int:
        raise StagelineError("the store is gone")

    daemon.options = DaemonOptions(retain=60.0)
    daemon.log = RecordingLog()
    daemon.store.delete_finished = broken
    daemon.retain()
    assert daemon.log.lines == [("daemon:retain_failed", {"error": "the store is gone"})]
