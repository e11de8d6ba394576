"""The console's Starlette application: routes, the guard, and the journal watch.

`build_app(store)` serves one store: the API reads it and posts to its mailbox, so the
console can run apart from every daemon (`stageline console`). Given the daemon's
`registry` (`stageline serve --http`), it also reports the registry's stats and streams
its runs' live events (the stage in flight, step starts and retries).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stageline.core.errors import StoreError

from .api import JSON, Api
from .auth import Guard
from .bodies import ApiError
from .live import LiveEvents
from .pages import STATIC, Pages
from .stream import EventStreams
from .watch import JournalWatch


def build_app(store: Any, *, token: str | None = None, registry: Any = None) -> Starlette:
    """The console on `store`; `token` guards it; `registry` adds live events and stats."""
    live = None
    if registry is not None:
        from stageline.actors.taps import tap_events

        live = LiveEvents()
        tap_events(registry, live.publish)
    watch = JournalWatch(store)
    api, streams, pages = Api(store, registry), EventStreams(store, watch, live), Pages(token)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watch.start()
        try:
            yield
        finally:
            watch.stop()

    app = Starlette(routes=_routes(api, streams, pages), lifespan=lifespan,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error,
                                        StoreError: _store_error})  # fmt: skip
    app.add_middleware(Guard, token=token)
    app.state.watch = watch  # the server ends open streams through it when it stops
    return app


def _routes(api: Api, streams: EventStreams, pages: Pages) -> list[Any]:
    return [
        Route("/", pages.runs),
        Route("/runs/{run_id}", pages.run),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/api/health", api.health),
        Route("/api/stats", api.stats),
        Route("/api/runs", api.runs, methods=["GET"]),
        Route("/api/runs", api.start, methods=["POST"]),
        Route("/api/runs/{run_id}/events", streams.events),
        Route("/api/runs/{run_id}/resume", api.resume, methods=["POST"]),
        Route("/api/runs/{run_id}/retry", api.retry, methods=["POST"]),
        Route("/api/runs/{run_id}/abort", api.abort, methods=["POST"]),
        Route("/api/runs/{run_id}", api.run),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSON({"error": exc.reason}, status_code=exc.status)


async def _store_error(request: Request, exc: Exception) -> Response:
    """The store failed (unreachable, locked): 503 with its one line; try again later."""
    reason = " ".join(str(exc).split())
    return JSON({"error": f"the store failed: {reason}"}, status_code=503)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method): JSON under /api/."""
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        reason = f"{exc.detail}: {request.method} {request.url.path}"
        return JSON({"error": reason}, status_code=exc.status_code)
    return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")
