"""One timer service: a single thread that fires callbacks at deadlines on a Clock.

With a manual clock the thread sleeps until the clock is advanced, so tests fire
timeouts, backoffs and expiries deterministically without sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable

from stageline.core.clock import Clock

_log = logging.getLogger("stageline")


_MIN_COMPACT = 1024
_MAX_WAIT = 3600.0


def _nothing() -> None:
    pass


class TimerHandle:
    """A scheduled callback; `cancel()` keeps it from firing (idempotent)."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = _nothing  # let go of what the callback holds (a run, its state)


class TimerService:
    """Fires callbacks on its own daemon thread, in deadline order."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._stopped = False
        self._firing = False
        self._thread: threading.Thread | None = None
        self._compact_at = _MIN_COMPACT
        clock.subscribe(self._wake)

    def schedule(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Call `callback` once `delay` seconds of clock time have passed."""
        handle = TimerHandle(self.clock.monotonic() + max(0.0, delay), callback)
        with self._cond:
            heapq.heappush(self._heap, (handle.deadline, next(self._counter), handle))
            if len(self._heap) >= self._compact_at:
                self._compact()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="stageline-timers", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return handle

    def _compact(self) -> None:
        """Drop cancelled timers (under the lock). Every finished step cancels its timeout
        and every resume its pause window; left in the heap until their deadlines, they
        would pile up (an hour's timeouts at hundreds of steps a second). Amortized O(1)."""
        self._heap = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._compact_at = max(_MIN_COMPACT, 2 * len(self._heap))

    def pending(self) -> int:
        """How many timers are armed and not cancelled (for tests and stats)."""
        with self._cond:
            return sum(1 for _, _, h in self._heap if not h.cancelled)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every timer due by now has fired (for tests on a manual clock)."""

        def idle() -> bool:
            due = bool(self._heap) and self._heap[0][0] <= self.clock.monotonic()
            return not self._firing and not due

        with self._cond:
            return self._cond.wait_for(idle, timeout)

    def _loop(self) -> None:
        while True:
            due = self._next_due()
            if due is None:
                return
            for handle in due:
                if not handle.cancelled:
                    try:
                        handle.callback()
                    except Exception:
                        _log.exception("stageline timer callback failed")
            with self._cond:
                self._firing = False
                self._cond.notify_all()

    def _next_due(self) -> list[TimerHandle] | None:
        with self._cond:
            while not self._stopped:
                now = self.clock.monotonic()
                due: list[TimerHandle] = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if due:
                    self._firing = True
                    return due
                self._cond.wait(self._wait_time(now))
            return None

    def _wait_time(self, now: float) -> float | None:
        if self.clock.manual:
            return None
        if not self._heap:
            return None
        # bounded: a wait of years overflows the lock's timeout (the loop just looks again)
        return min(_MAX_WAIT, max(0.0, self._heap[0][0] - now))
