"""A console over a store, with a daemon acting on its mailbox: shared by the console tests.

`Console` serves `build_app` on a real uvicorn server (a thread, port 0), with a Daemon
serving the store's mailbox on another thread, so requests go the whole way: HTTP, the
mailbox, the daemon, the run, the journal, the event stream.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import httpx

from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline._console.app import build_app
from stageline._console.server import serve_in_thread
from stageline.daemon import Daemon


def route_first(state, results):
    return Pause("ship")


def fail_step(state, ctx):
    if not state.get("fixed"):
        raise ValueError("the card was declined")
    return {"charged": True}


GATE = Pipeline(
    "gate",
    [
        Stage("ask", 1, steps=[Step("ask", lambda s, c: {"asked": True})], router=route_first),
        Stage("skipped", 2, steps=[Step("never", lambda s, c: {"never": True})]),
        Stage("ship", 3, steps=[Step("label", lambda s, c: {"shipped": s.get("approved")})]),
    ],
)
CHARGE = Pipeline("charge", [Stage("charge", 1, steps=[Step("card", fail_step)])])


class Console:
    """A served console and, unless `daemon=False`, a daemon on the same store."""

    def __init__(
        self,
        store: Any,
        *,
        token: str | None = None,
        daemon: bool = True,
        pipelines: Sequence[Pipeline] = (GATE, CHARGE),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.registry = Registry()
        self.factories = {
            p.id: PipelineFactory(p, store=store, registry=self.registry) for p in pipelines
        }
        self.stop_daemon = threading.Event()
        self.daemon_thread: threading.Thread | None = None
        if daemon:
            served = Daemon(self.factories, store, self.registry)
            served.start()
            self.daemon_thread = threading.Thread(target=served.serve, args=(self.stop_daemon,))
            self.daemon_thread.start()
        app = build_app(store, token=token, registry=self.registry if daemon else None)
        self.url, self._stop_http = serve_in_thread(app)
        self.http = httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def paused_run(self, run_id: str = "r-paused") -> str:
        result = self.factories["gate"].prepare(run_id=run_id).run(timeout=30)
        assert result.status == "paused"
        return run_id

    def failed_run(self, run_id: str = "r-failed") -> str:
        result = self.factories["charge"].prepare(run_id=run_id).run(timeout=30)
        assert result.status == "failed"
        return run_id

    def close(self) -> None:
        self.http.close()
        self._stop_http()
        self.stop_daemon.set()
        if self.daemon_thread is not None:
            self.daemon_thread.join(timeout=30)
        self.registry.stop()


def sse_frames(text: str) -> list[dict[str, str]]:
    """Server-sent events as dicts of their fields (comments and retry lines dropped)."""
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "event" in fields or "data" in fields:
            frames.append(fields)
    return frames
