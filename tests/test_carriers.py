"""Carrier threads (actors/carriers.py): actor loops reuse idle threads, within bounds."""

from __future__ import annotations

import contextvars
import gc
import os
import threading
import weakref

import pytest

from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.actors.carriers import IDLE_NAME, Carriers, shared_carriers

pytestmark = pytest.mark.timeout(30)


def _run(carriers: Carriers, name: str = "job") -> threading.Thread:
    """Run one loop on `carriers`; return the thread that carried it, once it has ended."""
    seen: list[threading.Thread] = []
    done = threading.Event()

    def loop() -> None:
        seen.append(threading.current_thread())
        done.set()

    carriers.run(loop, name)
    assert done.wait(10)
    return seen[0]


def _wait_idle(carriers: Carriers, count: int) -> None:
    for _ in range(1000):
        if carriers.idle_count() == count:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"{carriers.idle_count()} idle carriers, expected {count}")


def test_a_finished_loop_leaves_its_thread_for_the_next_one():
    carriers = Carriers(idle_timeout=10)
    first = _run(carriers, "first")
    _wait_idle(carriers, 1)
    assert first.name == IDLE_NAME
    second = _run(carriers, "second")
    assert second is first
    carriers.retire_idle(timeout=10)
    assert not first.is_alive()


def test_an_idle_carrier_exits_after_its_timeout():
    carriers = Carriers(idle_timeout=0.05)
    thread = _run(carriers)
    thread.join(10)
    assert not thread.is_alive() and carriers.idle_count() == 0


def test_at_most_max_idle_carriers_wait():
    carriers = Carriers(idle_timeout=10, max_idle=2)
    release = threading.Event()
    started = threading.Barrier(6)
    threads: list[threading.Thread] = []

    def loop() -> None:
        threads.append(threading.current_thread())
        started.wait(10)
        release.wait(10)

    for index in range(5):
        carriers.run(loop, f"busy-{index}")
    started.wait(10)
    assert len(set(threads)) == 5  # none idle: each loop got a thread of its own
    release.set()
    for _ in range(1000):
        if sum(t.is_alive() for t in threads) == 2:
            break
        threading.Event().wait(0.005)
    assert sum(t.is_alive() for t in threads) == 2 and carriers.idle_count() == 2
    carriers.retire_idle(timeout=10)
    assert not any(t.is_alive() for t in threads)


def test_a_loop_that_raises_ends_only_its_carrier():
    carriers = Carriers(idle_timeout=10)

    def broken() -> None:
        raise RuntimeError("boom")

    threading.excepthook, hook = (lambda args: None), threading.excepthook
    try:
        carriers.run(broken, "broken")
        thread = _run(carriers)  # a new thread or the broken one's: either way it runs
    finally:
        threading.excepthook = hook
    assert thread.is_alive()
    carriers.retire_idle(timeout=10)


def test_runs_resume_on_reused_threads_and_a_stopped_registry_leaves_none_idle():
    pipeline = Pipeline(
        "gate",
        [
            Stage("a", 1, steps=[Step("a", lambda s, c: {"a": 1})], router=lambda s, r: Pause("b")),
            Stage("b", 2, steps=[Step("b", lambda s, c: {"b": 2})]),
        ],
    )
    carried: set[threading.Thread] = set()
    with Registry() as registry:
        factory = PipelineFactory(pipeline, registry=registry)
        for _ in range(20):
            paused = factory.prepare().run(timeout=10)
            resumed = factory.resume(paused.run_id)
            resumed.on("stage:start", lambda e: carried.add(threading.current_thread()))
            assert resumed.run(timeout=10).state == {"a": 1, "b": 2}
        assert 1 <= shared_carriers().idle_count() <= shared_carriers().max_idle
    assert len(carried) < 20  # resumed runs ran on threads that carried earlier actors
    assert shared_carriers().idle_count() == 0
    for thread in carried:  # none parks after the stop: each ends with its last loop
        thread.join(10)
        assert not thread.is_alive()


def test_each_loop_runs_in_a_fresh_context():
    """A context variable set in one actor's loop (a handler binding structlog's
    contextvars, say) is not seen by the next loop on the same carrier."""
    carriers = Carriers(idle_timeout=10)
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[threading.Thread, str]] = []
    done = threading.Event()

    def setter() -> None:
        var.set("set by the first loop")
        seen.append((threading.current_thread(), var.get()))
        done.set()

    def reader() -> None:
        seen.append((threading.current_thread(), var.get()))
        done.set()

    carriers.run(setter, "first")
    assert done.wait(10)
    _wait_idle(carriers, 1)
    done.clear()
    carriers.run(reader, "second")
    assert done.wait(10)
    carriers.retire_idle(timeout=10)
    (first, value1), (second, value2) = seen
    assert first is second and value1 == "set by the first loop" and value2 == "unset"


def test_a_parked_carrier_keeps_nothing_of_the_actor_it_carried():
    """Was: the thread's args and the loop variable kept the first (and the last) actor
    alive, with its run's state, as long as the carrier lived."""
    carriers = Carriers(idle_timeout=10)

    class Actor:
        def __init__(self) -> None:
            self.state = bytearray(1_000_000)
            self.done = threading.Event()

        def loop(self) -> None:
            self.done.set()

    first, second = Actor(), Actor()
    gone = [weakref.ref(first), weakref.ref(second)]
    for actor in (first, second):
        carriers.run(actor.loop, "actor")
        assert actor.done.wait(10)
        _wait_idle(carriers, 1)
    del first, second, actor
    gc.collect()
    assert [ref() for ref in gone] == [None, None]
    carriers.retire_idle(timeout=10)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_starts_its_own_carriers():
    """A child process has none of its parent's idle carriers' threads; a loop handed to
    one of them there would never run."""
    carriers = shared_carriers()
    _run(carriers, "parent")
    _wait_idle(carriers, carriers.idle_count() or 1)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if a loop runs
        ran = threading.Event()
        carriers.run(ran.set, "child")
        os._exit(0 if ran.wait(5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
