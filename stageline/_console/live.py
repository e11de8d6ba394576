"""The runtime's own events, live, for the streams of a console served by the daemon.

When `stageline serve --http` serves the console, every run its registry drives also
reports its events here (`actors.taps`): the stage in flight (`stage:start`), step starts,
successes, retries and failures as they happen. These are not in the journal (step events
never are; a stage's `stage:start` is journaled with its commit, when the stage is over),
so a stream sends them without an `id:`: they are shown, never replayed, and the stream's
`Last-Event-ID` still counts journal events only. Delivery costs one dict lookup per event
for runs nobody watches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from stageline import _cli_format as fmt
from stageline.core import events as ev
from stageline.core.events import Event

LIVE_NAMES = frozenset(
    {ev.STAGE_START, ev.STEP_START, ev.STEP_SUCCESS, ev.STEP_RETRY, ev.STEP_FAILURE}
)
_STAGE_ENDS = frozenset({ev.STAGE_SUCCESS, ev.STAGE_FAILURE, ev.STAGE_PAUSED, *ev.TERMINAL_EVENTS})
IN_FLIGHT_LIMIT = 200
"""Live events kept per run for the stage in flight (a stream opened mid-stage gets them)."""
QUEUE_SIZE = 1000
"""Live events a slow stream may fall behind by; past it, the oldest are dropped."""

Watcher = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[dict[str, Any]]"]


class LiveEvents:
    """The stage in flight of each run, which streams watch which run, and the handler
    the registry's runs report to.

    A run's live events since its current stage started are kept (as events: nothing is
    built for runs nobody watches) until the stage's journaled end arrives, so a stream
    opened in the middle of a long stage still shows that stage and its steps.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, tuple[Watcher, ...]] = {}
        self._in_flight: dict[str, list[Event]] = {}

    def publish(self, event: Event) -> None:
        """A run's event (called on its actor's thread)."""
        name, run_id = event.name, event.run_id
        if name in LIVE_NAMES:
            watchers = self._remember(event)
        elif name in _STAGE_ENDS and len(event.path) <= 1:
            with self._lock:
                self._in_flight.pop(run_id, None)
            return
        else:
            return
        if not watchers:
            return
        data = live_dict(event)  # built once, for every stream watching the run
        for loop, queue in watchers:
            try:
                loop.call_soon_threadsafe(_offer, queue, data)
            except RuntimeError:  # that stream's loop has closed
                pass

    def _remember(self, event: Event) -> tuple[Watcher, ...]:
        """Keep the event for streams still to open; the streams open now (read under the
        same lock, so a stream gets each event once: kept, or delivered)."""
        with self._lock:
            if event.name == ev.STAGE_START and len(event.path) <= 1:
                self._in_flight[event.run_id] = [event]
            else:
                kept = self._in_flight.setdefault(event.run_id, [])
                if len(kept) < IN_FLIGHT_LIMIT:
                    kept.append(event)
            return self._watchers.get(event.run_id, ())

    def watch(self, run_id: str) -> tuple[asyncio.Queue[dict[str, Any]], Callable[[], None]]:
        """A queue of `run_id`'s live events for the calling stream (the stage in flight's
        so far first), and how to stop."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        watcher = (asyncio.get_running_loop(), queue)
        with self._lock:
            for event in self._in_flight.get(run_id, ()):
                queue.put_nowait(live_dict(event))
            self._watchers[run_id] = (*self._watchers.get(run_id, ()), watcher)

        def stop() -> None:
            with self._lock:
                left = tuple(w for w in self._watchers.get(run_id, ()) if w is not watcher)
                if left:
                    self._watchers[run_id] = left
                else:
                    self._watchers.pop(run_id, None)

        return queue, stop


def live_dict(event: Event) -> dict[str, Any]:
    data = fmt.event_dict(event)
    data["live"] = True
    return data


def _offer(queue: asyncio.Queue[dict[str, Any]], data: dict[str, Any]) -> None:
    if queue.qsize() >= QUEUE_SIZE:
        queue.get_nowait()
    queue.put_nowait(data)
