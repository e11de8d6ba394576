"""Carrier threads: the threads that run actor loops, kept briefly between actors.

Starting an OS thread costs more than a whole in-memory stage, and a run's actor starts on
every run and every resume. So an actor loop runs on a carrier: an idle one if there is
one, else a new thread. When the loop ends (the actor stopped), its carrier waits up to
`idle_timeout` seconds for the next actor, then exits; at most `max_idle` carriers wait,
so a burst of thousands of runs does not leave thousands of threads behind. An idle
carrier (named "stageline-carrier") belongs to no run: a paused run still holds no
thread, and `retire_idle()` ends every idle carrier at once (`Registry.stop` calls it).
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable

Loop = Callable[[], None]

IDLE_TIMEOUT = 2.0
"""Seconds an idle carrier waits for another actor before its thread exits."""

MAX_IDLE = 4
"""Idle carriers kept at most; a carrier that finds this many waiting exits at once."""

IDLE_NAME = "stageline-carrier"


_Job = tuple[Loop, str, int]
"""An actor loop, the name its thread takes, and the retirement count when it was handed."""


class _Carrier:
    __slots__ = ("inbox", "thread")

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None


class Carriers:
    """A cache of idle threads that actor loops run on (last idle, first reused)."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT, max_idle: int = MAX_IDLE) -> None:
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.forget_threads()

    def forget_threads(self) -> None:
        """Start afresh with no idle carriers (also after a fork: the child has none of its
        parent's threads, so it must not hand loops to them)."""
        self._lock = threading.Lock()
        self._idle: list[_Carrier] = []
        self._retirements = 0

    def run(self, loop: Loop, name: str) -> None:
        """Run `loop()` on an idle carrier, or on a new daemon thread named `name`."""
        with self._lock:
            job = (loop, name, self._retirements)
            if self._idle:
                self._idle.pop().inbox.put(job)  # under the lock: see _next
                return
        carrier = _Carrier()
        carrier.inbox.put(job)  # not as the thread's args, which it keeps until it exits
        carrier.thread = threading.Thread(
            target=self._carry, args=(carrier,), name=name, daemon=True
        )
        carrier.thread.start()

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def retire_idle(self, timeout: float | None = None) -> None:
        """End every idle carrier's thread now, and let each loop running now end its
        thread when it ends; wait up to `timeout` for the idle ones to exit."""
        with self._lock:
            self._retirements += 1
            idle, self._idle = self._idle, []
            for carrier in idle:
                carrier.inbox.put(None)
        if timeout is not None:
            for carrier in idle:
                if carrier.thread is not None:
                    carrier.thread.join(timeout)

    def _carry(self, carrier: _Carrier) -> None:
        thread = threading.current_thread()
        job = carrier.inbox.get()
        while job is not None:
            loop, thread.name, retirements = job
            job = None  # nothing of a finished actor stays referenced while its carrier waits
            # A fresh context, as a new thread has: context variables a handler or router
            # sets (structlog's contextvars, say) do not leak into the next actor's loop.
            contextvars.Context().run(loop)  # pykka's loop handles its own exceptions
            del loop
            job = self._next(carrier, thread, retirements)

    def _next(self, carrier: _Carrier, thread: threading.Thread, retirements: int) -> _Job | None:
        with self._lock:
            # A loop handed over before idle carriers were retired does not park either.
            if self._retirements != retirements or len(self._idle) >= self.max_idle:
                return None
            thread.name = IDLE_NAME
            self._idle.append(carrier)
        try:
            return carrier.inbox.get(timeout=self.idle_timeout)
        except queue.Empty:
            with self._lock:
                if carrier in self._idle:
                    self._idle.remove(carrier)
                    return None
            # Taken by `run` or `retire_idle` just as the wait ran out: its put was made
            # under the lock, so the job (or None) is already in the inbox.
            return carrier.inbox.get()


_shared = Carriers()


def shared_carriers() -> Carriers:
    """The process-wide carriers every stageline actor runs on."""
    return _shared


# A forked child has none of its parent's threads: it must not hand loops to them.
os.register_at_fork(after_in_child=_shared.forget_threads)
