"""`GET /api/runs/{run_id}/events`: a run's journal as a server-sent event stream.

Exactly once and gap-free: each journal event is sent once, in seq order, with `id: SEQ`,
read from the store after the last seq sent. A client that reconnects with
`Last-Event-ID: N` (browsers do it by themselves) or `?after=N` gets exactly the events
after N. New events arrive as soon as the console's journal watch sees a commit
(watch.py). The stream ends, with a last `event: end`, once the run has ended for good
(succeeded, failed, aborted, expired, quarantined, corrupt, or deleted), read at every
wake-up and at least every STATUS_EVERY seconds; a paused or sleeping run's stream stays
open and goes on when the run does. Served by the daemon driving the run,
the stream also carries that runtime's live events without an id (live.py). A comment
line every KEEPALIVE seconds keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from stageline import _cli_format as fmt
from stageline.core import lifecycle
from stageline.core.errors import RunNotFound, StoreError

from .bodies import ApiError, read_run

if TYPE_CHECKING:
    from stageline.core.events import Event
    from stageline.core.store import Store

    from .live import LiveEvents
    from .watch import JournalWatch

KEEPALIVE = 15.0
"""Seconds of silence after which a stream sends a comment line (proxies close idle ones)."""
STATUS_EVERY = 2.0
"""Seconds between reads of the run's status while nothing wakes the stream."""
ENDED = frozenset({*lifecycle.FINISHED, lifecycle.QUARANTINED, lifecycle.CORRUPT})
END_FRAME = b"event: end\ndata: {}\n\n"
_log = logging.getLogger("stageline")


class EventStreams:
    """The handler of the event stream, on one store and its journal watch."""

    def __init__(self, store: Store, watch: JournalWatch, live: LiveEvents | None) -> None:
        self.store = store
        self.watch = watch
        self.live = live

    async def events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        after = _after(request)
        if await run_in_threadpool(self._status, run_id) is None:
            raise ApiError(404, f"no run {run_id!r} in this store")
        return StreamingResponse(
            self._stream(run_id, after),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _stream(self, run_id: str, after: int) -> AsyncIterator[bytes]:
        queue, stop = self.live.watch(run_id) if self.live is not None else (None, None)
        try:
            yield b"retry: 1000\n\n"
            last_write = time.monotonic()
            while True:
                seen = self.watch.version
                batch = await run_in_threadpool(self.store.read_events, run_id, after)
                for event in batch:
                    yield journal_frame(event)
                    after = event.seq
                if await self._ended(run_id):
                    for event in await run_in_threadpool(self.store.read_events, run_id, after):
                        yield journal_frame(event)
                    yield END_FRAME
                    return
                if batch:
                    last_write = time.monotonic()
                for data in await self._next(seen, queue):
                    yield live_frame(data)
                    last_write = time.monotonic()
                if self.watch.closing:  # the server is stopping: the client reconnects
                    return
                if time.monotonic() - last_write >= KEEPALIVE:
                    yield b": keep-alive\n\n"
                    last_write = time.monotonic()
        except StoreError as exc:  # the store went away: end here; the client reconnects
            _log.warning("console: the event stream of run %s stopped: %s", run_id, exc)
        finally:
            if stop is not None:
                stop()

    async def _next(
        self, seen: int, queue: asyncio.Queue[dict[str, Any]] | None
    ) -> list[dict[str, Any]]:
        """Wait for a journal change, a live event or STATUS_EVERY seconds; the live events."""
        waiting: set[asyncio.Future[Any]] = {
            asyncio.ensure_future(self.watch.wait(seen, STATUS_EVERY))
        }
        got = None if queue is None else asyncio.ensure_future(queue.get())
        if got is not None:
            waiting.add(got)
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiting:
                task.cancel()
        live = [got.result()] if got is not None and got in done and not got.cancelled() else []
        while queue is not None and not queue.empty():
            live.append(queue.get_nowait())
        return live

    async def _ended(self, run_id: str) -> bool:
        """Has the run ended for good (or been deleted)? Read at every wake-up, and every
        STATUS_EVERY seconds: a run can end by a commit without journal events (a pause
        that expired with no `on_expiry`, a quarantine) or be deleted by retention."""
        return await run_in_threadpool(self._status, run_id) in (*ENDED, None)

    def _status(self, run_id: str) -> str | None:
        try:
            info, _ = read_run(self.store, run_id)
        except RunNotFound:
            return None
        return str(lifecycle.CORRUPT if info is None else info.status)


def journal_frame(event: Event) -> bytes:
    data = fmt.dumps(fmt.event_dict(event))
    return f"id: {event.seq}\nevent: {_one_line(event.name)}\ndata: {data}\n\n".encode()


def live_frame(data: dict[str, Any]) -> bytes:
    return f"event: {_one_line(data['name'])}\ndata: {fmt.dumps(data)}\n\n".encode()


def _one_line(name: str) -> str:
    """An event name as one SSE field (a hand-edited journal could hold a line break)."""
    return " ".join(str(name).split())


def _after(request: Request) -> int:
    """Where the stream starts: after `Last-Event-ID`, else `?after=`, else the beginning."""
    text = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not (text.isascii() and text.isdigit()):
        raise ApiError(400, f"Last-Event-ID / ?after= must be a journal seq (a whole number), "
                       f"got {text!r}")  # fmt: skip
    return int(text)
