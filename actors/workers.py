"""Where step actions run: a bounded pool of threads (sync) and one event loop (async).

The pool grows lazily up to `max_threads`. A step abandoned by its run (timed out or
aborted) may keep its thread busy forever, since Python cannot kill a thread; the pool
then lets one more thread exist for as long as that step runs, so stuck steps never
starve other runs. Once the abandoned step returns, the surplus thread retires.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

Job = Callable[[], None]


class _Retire:
    """Put in the job queue by `retire_idle`: the thread that takes it ends, unless a job
    was submitted since (then it is stale and ignored)."""

    __slots__ = ("epoch",)

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch


class Workers:
    """A lazily grown thread pool plus one asyncio loop thread, shared by runs."""

    def __init__(self, max_threads: int | None = None) -> None:
        self.max_threads = max_threads or min(32, (os.cpu_count() or 1) * 4 + 4)
        self._jobs: queue.SimpleQueue[Job | _Retire] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._abandoned = 0
        self._epoch = 0
        self._retiring = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, job: Job) -> None:
        """Run `job()` on a pool thread; it must not raise (wrap it)."""
        with self._lock:
            if self._retiring:  # retirement tokens still queued are stale from now on
                self._epoch += 1
                self._retiring = False
            if self._idle > 0:
                self._idle -= 1
            elif self._threads < self.max_threads + self._abandoned:
                self._threads += 1
                threading.Thread(target=self._work, name="stageline-step", daemon=True).start()
            self._jobs.put(job)

    def abandon(self) -> Callable[[], None]:
        """Count one running job as abandoned; call the returned function when it ends."""
        with self._lock:
            self._abandoned += 1
            if self._jobs.qsize() > 0 and self._idle == 0:
                self._threads += 1  # a queued job needs the thread the abandoned one holds
                threading.Thread(target=self._work, name="stageline-step", daemon=True).start()
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                with self._lock:
                    self._abandoned -= 1

        return release

    def _work(self) -> None:
        item: Job | _Retire | None = self._jobs.get()
        idle = False
        while True:
            if isinstance(item, _Retire):
                if self._retired(item, idle):
                    return
            elif item is not None:
                item()
                idle = False
            item = None  # an idle thread must not keep its last job (and what it holds)
            with self._lock:
                try:
                    item = self._jobs.get_nowait()
                    continue
                except queue.Empty:
                    if not idle and self._threads > self.max_threads + self._abandoned:
                        self._threads -= 1  # a thread added for an abandoned step retires
                        return
                    if not idle:
                        self._idle += 1
                        idle = True
            item = self._jobs.get()

    def _retired(self, token: _Retire, idle: bool) -> bool:
        with self._lock:
            if token.epoch != self._epoch:
                return False  # a job came after the retirement: keep working
            self._threads -= 1
            if idle:
                self._idle = max(0, self._idle - 1)
            return True

    def retire_idle(self) -> None:
        """End every pool thread once it has no job (a stopping registry leaves none
        behind); a busy one ends when its step returns. A job submitted meanwhile cancels
        the retirement, and threads are made again when steps need them."""
        with self._lock:
            self._epoch += 1
            self._retiring = True
            for _ in range(self._threads):
                self._jobs.put(_Retire(self._epoch))

    def run_coroutine(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule a coroutine on the runtime's event loop thread."""
        import asyncio  # only processes with async steps pay for importing asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._event_loop())

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=run, name="stageline-asyncio", daemon=True).start()
                ready.wait()
                self._loop = loop
            return self._loop


_shared: Workers | None = None
_shared_lock = threading.Lock()


def shared_workers() -> Workers:
    """The process-wide worker pool every run uses unless told otherwise."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Workers()
        return _shared
