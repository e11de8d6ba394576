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


class Workers:
    """A lazily grown thread pool plus one asyncio loop thread, shared by runs."""

    def __init__(self, max_threads: int | None = None) -> None:
        self.max_threads = max_threads or min(32, (os.cpu_count() or 1) * 4 + 4)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._abandoned = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, job: Job) -> None:
        """Run `job()` on a pool thread; it must not raise (wrap it)."""
        with self._lock:
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
        job = self._jobs.get()
        while job is not None:
            job()
            with self._lock:
                try:
                    job = self._jobs.get_nowait()
                    continue
                except queue.Empty:
                    if self._threads > self.max_threads + self._abandoned:
                        self._threads -= 1  # a thread added for an abandoned step retires
                        return
                    self._idle += 1
            job = self._jobs.get()

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
