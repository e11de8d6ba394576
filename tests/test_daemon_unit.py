"""The daemon's request handling in-process, on every store (the `store` fixture).

Requests are posted into the store's mailbox and `Daemon.poll_once()` claims and answers
them; runs are awaited through the registry's live RunContext (`wait`), never by sleeping.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import Counter

import pytest
from cli_helpers import raw_execute, store_url_of  # tests/ is on sys.path

from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.core.errors import StagelineError, StoreError
from stageline.core.mailbox import DONE, FAILED, Request
from stageline.daemon import Daemon, DaemonOptions, _factories, bind_factories
from stageline.stores import MemoryStore

pytestmark = pytest.mark.timeout(60)

FLAKY = {"failures": 0}


def flaky(state, ctx):
    if FLAKY["failures"] > 0:
        FLAKY["failures"] -= 1
        raise RuntimeError("transient")
    return {"shipped": True}


approval = Pipeline("approval", [
    Stage("ask", order=1, steps=[Step("ask", lambda s, c: {"asked": True})],
          router=lambda s, r: None if s.get("ok") else Pause("ship", timeout=60)),
    Stage("ship", order=2, steps=[Step("ship", flaky)]),
])  # fmt: skip
quick = Pipeline("quick", [Stage("one", order=1, steps=[Step("one", lambda s, c: {"n": 1})])])


@pytest.fixture
def served(store):
    with Registry() as registry:
        factories = bind_factories(
            [PipelineFactory(approval, initial_state={"items": 1}), PipelineFactory(quick)],
            store,
            registry,
        )
        contexts: dict = {}
        daemon = Daemon(
            factories, store, registry, on_start=lambda c: contexts.update({c.run_id: c})
        )
        daemon.contexts = contexts  # the last RunContext started per run
        yield daemon


_ids = itertools.count()


def post(daemon: Daemon, kind: str, run_id: str, **fields) -> str:
    request_id = f"{kind}-{run_id}-{next(_ids)}"
    daemon.store.post_request(Request(request_id, kind, run_id, time.time(), **fields))
    return request_id


def act(daemon: Daemon, kind: str, run_id: str, **fields) -> Request:
    """Post one request, let the daemon handle it, return it answered."""
    request_id = post(daemon, kind, run_id, **fields)
    assert daemon.poll_once() == 1
    return daemon.store.get_request(request_id)


def wait(daemon: Daemon, run_id: str):
    return daemon.contexts[run_id].wait(10)


def test_start_pause_resume_with_a_patch(served):
    started = act(served, "start", "r1", pipeline_id="approval", args={"state": {"items": 3}})
    assert (started.status, started.answer) == (DONE, None)
    assert wait(served, "r1").status == "paused"
    assert served.store.get_run("r1").state == {"items": 3, "asked": True}

    resumed = act(served, "resume", "r1", args={"patch": {"ok": True}})
    assert resumed.status == DONE
    result = wait(served, "r1")
    assert result.status == "succeeded" and result.state["ok"] is True


def test_errors_name_the_run_and_what_is_wrong(served):
    act(served, "start", "done", pipeline_id="quick")
    assert wait(served, "done").status == "succeeded"
    cases = [
        ("resume", "ghost", {}, "run 'ghost' is not in this store"),
        ("resume", "done", {}, "run 'done' is not paused (status succeeded); cannot resume it"),
        ("retry", "done", {}, "run 'done' is not failed or quarantined (status succeeded)"),
        ("abort", "done", {}, "run 'done' is not pending, running or paused (status succeeded)"),
        ("start", "done", {"pipeline_id": "approval"}, "run 'done' already exists"),
        ("start", "new", {"pipeline_id": "nope"}, "pipeline 'nope' is not served"),
        ("start", "new", {"pipeline_id": "quick", "args": {"entry": "zz"}}, "entry 'zz'"),
    ]
    for kind, run_id, fields, message in cases:
        answered = act(served, kind, run_id, **fields)
        assert answered.status == FAILED and message in answered.answer, (kind, run_id)
        assert "\n" not in answered.answer


def test_retry_restarts_a_failed_run_from_its_failed_stage(served):
    FLAKY["failures"] = 1
    act(served, "start", "f1", pipeline_id="approval", args={"state": {"ok": True}})
    assert wait(served, "f1").status == "failed"
    assert act(served, "retry", "f1").status == DONE
    assert wait(served, "f1").status == "succeeded"
    assert served.store.get_run("f1").state["shipped"] is True


def test_abort_a_live_paused_run_and_one_only_the_store_holds(served, store):
    act(served, "start", "a1", pipeline_id="approval")
    act(served, "start", "a2", pipeline_id="approval")
    assert wait(served, "a1").status == wait(served, "a2").status == "paused"
    served.registry.supervisor.forget(served.registry.supervisor.lookup("a2"))  # as if its live window had ended
    served.registry.stats()  # (an ask: the forget has been handled)
    for run_id in ("a1", "a2"):
        assert act(served, "abort", run_id, args={"reason": "no"}).status == DONE
        info = store.get_run(run_id)
        assert info.status == "aborted" and info.checkpoint is None


def test_racing_daemons_act_on_each_request_exactly_once(store):
    total = 20
    contexts: list = []
    with Registry() as one, Registry() as two:
        daemons = [
            Daemon(
                bind_factories([PipelineFactory(quick)], store, r),
                store,
                r,
                on_start=contexts.append,
            )
            for r in (one, two)
        ]
        ids = [post(daemons[0], "start", f"q{n}", pipeline_id="quick") for n in range(total)]
        barrier = threading.Barrier(2)
        handled: Counter[str] = Counter()

        def serve(daemon: Daemon) -> None:
            barrier.wait(timeout=10)
            while count := daemon.poll_once():
                handled[daemon.name] += count

        threads = [threading.Thread(target=serve, args=(d,)) for d in daemons]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sum(handled.values()) == total
        answers = [store.get_request(request_id) for request_id in ids]
        assert all(a.status == DONE for a in answers), [a.answer for a in answers]
        assert len(store.list_runs(pipeline_id="quick")) == total
        assert sorted(c.run_id for c in contexts) == sorted(f"q{n}" for n in range(total))
        assert all(c.wait(10).status == "succeeded" for c in contexts)


def test_a_crashing_action_is_answered_and_the_daemon_goes_on(served, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(served.factories["quick"], "prepare", broken)
    answered = act(served, "start", "b1", pipeline_id="quick")
    assert answered.status == FAILED
    assert answered.answer == "the daemon failed on this request: KeyError: 'bug'"


def test_app_loading_accepts_factories_pipelines_lists_and_callables():
    factory = PipelineFactory(quick)
    assert _factories(factory, "m:a") == [factory]
    assert [f.pipeline for f in _factories(quick, "m:a")] == [quick]
    assert [f.pipeline for f in _factories(lambda: [quick, approval], "m:a")] == [quick, approval]
    assert [f.pipeline for f in _factories({"q": quick}, "m:a")] == [quick]
    for bad in (42, "quick", [], [42]):
        with pytest.raises(StagelineError, match="APP 'm:a'"):
            _factories(bad, "m:a")
    with Registry() as registry, pytest.raises(StagelineError, match="two factories"):
        bind_factories([factory, PipelineFactory(quick)], MemoryStore(), registry)


# --- how the daemon waits for requests: blocking on a store that can, polling otherwise -----


class NotifyingStore(MemoryStore):
    """A MemoryStore with `wait_for_requests`, as PostgresStore has: a post wakes a waiter."""

    def __init__(self) -> None:
        super().__init__()
        self.posted = threading.Event()
        self.waits: list[float] = []
        self.polls = 0

    def post_request(self, request: Request) -> None:
        super().post_request(request)
        self.posted.set()  # the NOTIFY

    def wait_for_requests(self, timeout: float, *, answers: bool = True) -> bool:
        assert answers is False  # a daemon has no use for answers
        self.waits.append(timeout)
        woke = self.posted.wait(timeout)
        self.posted.clear()
        return woke

    def mailbox_version(self) -> int:
        self.polls += 1
        return super().mailbox_version()


class PollingStore(NotifyingStore):
    wait_for_requests = None  # type: ignore[assignment]  # as SQLite: nothing to block on


def serve_in_thread(store, options: DaemonOptions):
    """A daemon serving `store` on a thread: (daemon, queue of started runs, stop, thread)."""
    started: queue.Queue = queue.Queue()
    registry = Registry()
    factories = bind_factories([PipelineFactory(quick)], store, registry)
    daemon = Daemon(factories, store, registry, options, on_start=started.put)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.serve, args=(stop,))
    thread.start()
    return daemon, started, stop, thread


# Polling and idle claims every minute: a request handled within seconds was woken for.
SLOW_POLL = DaemonOptions(poll_interval=60.0, idle_claim=60.0, recover_every=None)


def test_a_store_that_can_block_is_blocked_on_not_polled():
    store = NotifyingStore()
    daemon, started, stop, thread = serve_in_thread(store, SLOW_POLL)
    try:
        for n in range(3):
            request_id = post(daemon, "start", f"w{n}", pipeline_id="quick")
            assert started.get(timeout=10).run_id == f"w{n}"  # woken at once, not in 60 s
            assert daemon.store.get_request(request_id).status == DONE
    finally:
        stop.set()
        thread.join(timeout=5)  # a stop is seen within one wait slice
        daemon.registry.stop()
    assert not thread.is_alive()
    assert store.polls == 0
    assert store.waits and max(store.waits) <= SLOW_POLL.wait_slice


def test_a_store_that_cannot_block_is_polled():
    store = PollingStore()
    options = DaemonOptions(poll_interval=0.01, idle_claim=60.0, recover_every=None)
    daemon, started, stop, thread = serve_in_thread(store, options)
    try:
        post(daemon, "start", "p1", pipeline_id="quick")
        assert started.get(timeout=10).run_id == "p1"
    finally:
        stop.set()
        thread.join(timeout=5)
        daemon.registry.stop()
    assert not thread.is_alive() and store.polls >= 1 and store.waits == []


def test_the_wait_ends_when_an_idle_claim_or_a_recovery_is_due():
    options = DaemonOptions(wait_slice=0.2, idle_claim=1.0, recover_every=5.0)
    daemon = Daemon({}, MemoryStore(), Registry(), options)
    try:
        now = time.monotonic()
        assert daemon._wait_time(now, now) == pytest.approx(0.2, abs=0.05)
        assert daemon._wait_time(now - 0.9, now) == pytest.approx(0.1, abs=0.05)
        assert daemon._wait_time(now, now - 4.95) == pytest.approx(0.05, abs=0.05)
        assert daemon._wait_time(now - 3.0, now - 9.0) == 0.0
    finally:
        daemon.registry.stop()


def test_the_daemon_prunes_answers_older_than_it_keeps_them(served, store):
    done = act(served, "start", "p1", pipeline_id="quick")
    assert done.status == DONE
    wait(served, "p1")
    waiting = post(served, "resume", "p1")  # not claimed yet: never pruned
    served.prune()  # the default keeps answers for a day
    assert store.get_request(done.request_id).status == DONE
    served.options = DaemonOptions(keep_answered=None)
    served.prune()
    assert store.get_request(done.request_id).status == DONE
    served.options = DaemonOptions(keep_answered=0.0)
    served.prune()
    with pytest.raises(StagelineError, match=done.request_id):
        store.get_request(done.request_id)
    assert store.get_request(waiting).status == "pending"


# --- claiming: a request is claimed only when it is about to be acted on (SPEC 16) ------


def test_requests_are_claimed_one_at_a_time_so_a_kill_strands_at_most_one(served, store):
    entered, release = threading.Event(), threading.Event()
    factory = served.factories["quick"]
    prepare = factory.prepare

    def blocking(*args, **kwargs):
        entered.set()
        assert release.wait(10)
        return prepare(*args, **kwargs)

    factory.prepare = blocking
    ids = [post(served, "start", f"c{n}", pipeline_id="quick") for n in range(3)]
    thread = threading.Thread(target=lambda: [served.poll_once() for _ in ids])
    thread.start()
    try:
        assert entered.wait(10)  # acting on the first: were the daemon killed now...
        statuses = [store.get_request(request_id).status for request_id in ids]
        assert statuses == ["claimed", "pending", "pending"]  # ...only it would stay claimed
    finally:
        release.set()
        thread.join(10)
    assert [store.get_request(request_id).status for request_id in ids] == [DONE] * 3
    assert all(wait(served, f"c{n}").status == "succeeded" for n in range(3))


def test_a_store_failure_in_a_batch_leaves_none_of_the_rest_claimed(served, store):
    """An answer the store refuses is kept and written at the next pass; the rest of the
    batch is acted on and answered meanwhile (none is left claimed)."""
    served.options = DaemonOptions(claim_limit=3)
    ids = [post(served, "abort", f"ghost-{n}") for n in range(3)]
    answer = store.answer_request

    def failing(request_id, error=None):
        if request_id == ids[0]:
            raise StoreError("the disk is full")
        return answer(request_id, error)

    store.answer_request = failing
    served.poll_once()
    assert store.get_request(ids[0]).status == "claimed"  # acted on; its answer refused
    for request_id in ids[1:]:
        answered = store.get_request(request_id)
        assert answered.status == FAILED and "ghost" in answered.answer
    store.answer_request = answer  # the store is back
    served.poll_once()
    assert store.get_request(ids[0]).status == FAILED
    assert served.answers.owed == {}


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
def test_an_undecodable_request_in_a_batch_spoils_none_of_the_others(served, store):
    served.options = DaemonOptions(claim_limit=16)
    ids = [post(served, "start", f"d{n}", pipeline_id="quick") for n in range(3)]
    raw_execute(
        store_url_of(store), "UPDATE {s}.requests SET args = %s WHERE request_id = %s",
        (b"\xff\x00", ids[1]),
    )  # fmt: skip
    while served.poll_once():
        pass
    (status, answer), *_ = raw_execute(
        store_url_of(store), "SELECT status, answer FROM {s}.requests WHERE request_id = %s",
        (ids[1],),
    )  # fmt: skip
    assert status == FAILED and answer  # answered with an error (by the store), not claimed
    assert [store.get_request(i).status for i in (ids[0], ids[2])] == [DONE, DONE]
    assert wait(served, "d0").status == wait(served, "d2").status == "succeeded"


# --- the serving loop: a store it cannot write, errors that repeat ----------------------


def test_a_store_that_refuses_writes_is_found_at_start(served, store):
    served.check_writable()  # the store fixture's stores all take writes

    def refused(answered_before: float) -> int:
        raise StoreError("attempt to write a readonly database")

    store.prune_requests = refused
    with pytest.raises(StoreError, match="cannot write to its store") as raised:
        served.check_writable()
    assert "readonly" in str(raised.value) and "\n" not in str(raised.value)


class FailingStore(MemoryStore):
    """A MemoryStore whose mailbox fails while `failures` says so (a store that is down)."""

    def __init__(self, failures: list[bool]) -> None:
        super().__init__()
        self.failures = failures  # one entry per mailbox poll: True fails it

    def mailbox_version(self) -> int:
        if self.failures and self.failures.pop(0):
            raise StoreError("database is locked")
        return super().mailbox_version()


class RestingDaemon(Daemon):
    """Records each wait of the serving loop instead of waiting; stops after `turns`."""

    def __init__(self, *args, turns: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rests: list[float] = []
        self.turns = turns

    def _rest(self, stop: threading.Event, seconds: float) -> None:
        self.rests.append(seconds)
        if len(self.rests) >= self.turns:
            stop.set()


def test_repeated_store_errors_back_off_and_a_success_resets_the_backoff():
    failures = [True] * 8 + [False] + [True] * 2
    store = FailingStore(failures)
    options = DaemonOptions(poll_interval=0.01, idle_claim=3600.0, recover_every=None)
    with Registry() as registry:
        daemon = RestingDaemon({}, store, registry, options, turns=len(failures))
        daemon.log = RecordingLog()
        daemon.serve(threading.Event())  # returns after `turns` waits: nothing sleeps
    assert daemon.rests == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 0.01, 0.1, 0.2]
    errors = [fields for event, fields in daemon.log.lines if event == "daemon:store_error"]
    assert len(errors) == 10  # one line per error, however fast the loop would have spun
    assert [e["retry_in"] for e in errors[:3]] == [0.1, 0.2, 0.4]
    assert errors[0]["error"] == "database is locked"


class RecordingLog:
    """Stands in for the daemon's structlog logger: keeps (event, fields) of each line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def bind(self, **fields) -> RecordingLog:
        return self

    def info(self, event: str, **fields) -> None:
        self.lines.append((event, fields))

    warning = error = exception = info
