"""One thread per console that learns when any run's journal may have grown.

It blocks on the store's `wait_journal` (PostgreSQL: a LISTEN connection woken by the
NOTIFY each stage commit sends; SQLite: a bounded poll of `PRAGMA data_version`; memory:
a condition) and, on a change, wakes every open event stream on the event loop. The
streams then read their own run's journal after their last seq: one store wait for all
streams, however many are open, and no poll per stream.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

WAIT_SECONDS = 0.25
"""How long one `wait_journal` call blocks before the thread checks it should stop."""


class JournalWatch:
    """The latest journal version seen, and the streams waiting for the next."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.version = 0
        self.closing = False
        """Set when the server stops: every stream ends at its next wake-up (now)."""

    def start(self) -> None:
        """Start watching; called on the event loop (the app's startup)."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._watch, name="console-journal", daemon=True)
        self._thread.start()

    def close_streams(self) -> None:
        """End every open stream (from any thread): the server is stopping, and uvicorn
        waits for open responses to end before it shuts down."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._close)
        except RuntimeError:  # the loop has closed already
            pass

    def _close(self) -> None:
        self.closing = True
        self._bump(self.version + 1)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=WAIT_SECONDS * 2)

    async def wait(self, seen: int, timeout: float) -> None:
        """Return once the version differs from `seen`, or after `timeout`."""
        while self.version == seen:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout)
            except TimeoutError:
                return

    def _watch(self) -> None:
        seen: int | None = None  # read here, not on the loop: it may open a connection
        while not self._stopping.is_set():
            try:
                if seen is None:
                    version = self._store.journal_version()
                else:
                    version = self._store.wait_journal(seen, WAIT_SECONDS)
            except Exception:  # the store is unreachable for now: streams keep their place
                self._stopping.wait(WAIT_SECONDS)
                continue
            if version != seen and self._loop is not None:
                seen = version
                try:
                    self._loop.call_soon_threadsafe(self._bump, version)
                except RuntimeError:  # the loop has closed: the console is stopping
                    return

    def _bump(self, version: int) -> None:
        self.version = version
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
