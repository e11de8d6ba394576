"""The JSON API: list and read runs, and steer them through the store's mailbox.

Every store call is blocking, so it runs on Starlette's thread pool, never on the event
loop. Mutations post a request into the mailbox (as the CLI does) and answer 202 with it;
with `?wait=true` they wait (up to `?timeout=`, default 10 s) for a daemon's answer, and
an abort also for the run to stop. The sender's checks come first (the run exists, its
status allows the request), so a wrong request is refused at once, 404 or 409.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stageline import _cli_format as fmt
from stageline import _cli_mailbox as post
from stageline.core import lifecycle, mailbox
from stageline.core.errors import RunNotFound

from . import views
from .bodies import (
    ApiError,
    json_object,
    optional_object,
    optional_text,
    query_flag,
    query_int,
    read_run,
)

if TYPE_CHECKING:
    from stageline.core.mailbox import Request as MailboxRequest
    from stageline.core.store import Store

STATUS_WORDS = frozenset(lifecycle.STATUSES)
MAX_WAIT = 60
WAIT_POLL = 0.01
"""Seconds between looks at the mailbox while a request waits for its answer."""


class JSON(JSONResponse):
    """Strict JSON: a non-finite float a step stored becomes its name, as `show --json`."""

    def render(self, content: Any) -> bytes:
        return fmt.dumps(content).encode()


class Api:
    """The handlers of /api/*, on one store (and the daemon's registry, when served by one)."""

    def __init__(self, store: Store, registry: Any = None) -> None:
        self.store = store
        self.registry = registry

    # --- reading ------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSON({"ok": True})

    async def stats(self, request: Request) -> Response:
        return JSON(await run_in_threadpool(self._stats))

    def _stats(self) -> dict[str, Any]:
        from stageline._cli_mailbox import CLOCK
        from stageline._cli_ops import daemon_dict

        now = CLOCK.wall()
        pending = self.store.list_requests(mailbox.PENDING, limit=10_000)
        claimed = self.store.list_requests(mailbox.CLAIMED, limit=10_000)
        return {
            "registry": None if self.registry is None else self.registry.stats(),
            "mailbox": {"pending": len(pending), "claimed": len(claimed)},
            "daemons": [daemon_dict(beat, now) for beat in self.store.list_heartbeats()],
        }

    async def runs(self, request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUS_WORDS:
            words = ", ".join(sorted(STATUS_WORDS))
            raise ApiError(400, f"?status= must be one of {words}; got {status!r}")
        pipeline_id = request.query_params.get("pipeline") or None
        limit = query_int(request, "limit", 50, 1, 1000)
        before = request.query_params.get("before") or None
        try:
            found, cursor = await run_in_threadpool(
                self.store.page_runs, status, pipeline_id, limit, before
            )
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return JSON({"runs": [views.run_summary(info) for info in found], "next": cursor})

    async def run(self, request: Request) -> Response:
        return JSON(await run_in_threadpool(self._detail, request.path_params["run_id"]))

    def _detail(self, run_id: str) -> dict[str, Any]:
        from stageline.core.children import positions

        info, damage = self._info(run_id)
        if info is None:  # a damaged row: what it is, and why it cannot be read
            return views.corrupt_detail(run_id, str(damage))
        children = positions(self.store.load_run(run_id).state)
        return views.run_detail(info, children, self.store.read_events(run_id))

    def _info(self, run_id: str) -> tuple[Any, str | None]:
        """`read_run` of `run_id`; 404 when absent."""
        try:
            return read_run(self.store, run_id)
        except RunNotFound:
            raise ApiError(404, f"no run {run_id!r} in this store") from None

    # --- steering, through the mailbox ------------------------------------------------------

    async def start(self, request: Request) -> Response:
        body = await json_object(request)
        pipeline_id = optional_text(body, "pipeline")
        if not pipeline_id:
            raise ApiError(400, 'a start needs "pipeline": the id of the pipeline to run')
        priority = body.get("priority", 0)
        if type(priority) is not int:
            raise ApiError(400, f'"priority" must be a whole number, got {priority!r}')
        state = optional_object(body, "state")
        args = post.start_args(optional_text(body, "entry"), state, priority)
        run_id = optional_text(body, "run_id") or post.new_id()
        if await run_in_threadpool(post.exists, self.store, run_id):
            raise ApiError(409, f"run {run_id!r} already exists in this store")
        message = post.make_request(mailbox.START, run_id, args, pipeline_id)
        return await self._send(request, message)

    async def resume(self, request: Request) -> Response:
        return await self._with_patch(request, mailbox.RESUME)

    async def retry(self, request: Request) -> Response:
        return await self._with_patch(request, mailbox.RETRY)

    async def _with_patch(self, request: Request, kind: str) -> Response:
        body = await json_object(request)
        run_id = request.path_params["run_id"]
        await run_in_threadpool(self._check, kind, run_id)
        message = post.make_request(kind, run_id, {"patch": optional_object(body, "patch")})
        return await self._send(request, message)

    async def abort(self, request: Request) -> Response:
        body = await json_object(request)
        run_id = request.path_params["run_id"]
        await run_in_threadpool(self._check, mailbox.ABORT, run_id)
        reason = optional_text(body, "reason")
        message = post.make_request(mailbox.ABORT, run_id, {"reason": reason})
        return await self._send(request, message)

    def _check(self, kind: str, run_id: str) -> None:
        info, _ = self._info(run_id)
        status = lifecycle.CORRUPT if info is None else info.status
        problem = mailbox.status_problem(kind, run_id, status)
        if problem is not None:
            raise ApiError(409, problem)

    async def _send(self, request: Request, message: MailboxRequest) -> Response:
        wait = query_flag(request, "wait")
        timeout = query_int(request, "timeout", 10, 0, MAX_WAIT)
        await run_in_threadpool(self.store.post_request, message)
        answer = request_dict(message)
        if wait:
            answer = await self._answer(message, post.CLOCK.monotonic() + timeout)
        return JSON(answer, status_code=200 if answer["status"] in mailbox.ANSWERED else 202)

    async def _answer(self, message: MailboxRequest, deadline: float) -> dict[str, Any]:
        """The request once a daemon answered it (an abort: once the run stopped), or as
        it is at `deadline`. Waits on the event loop, not on a worker thread: each look at
        the store is a short call, so waiting requests never starve the pool."""
        seen = None
        while True:
            version = await run_in_threadpool(self.store.mailbox_version)
            if version != seen:
                seen = version
                message = await run_in_threadpool(self.store.get_request, message.request_id)
                if message.answered:
                    break
            if post.CLOCK.monotonic() >= deadline:
                return request_dict(message)
            await asyncio.sleep(WAIT_POLL)
        answer = request_dict(message)
        if message.kind == mailbox.ABORT and message.status == mailbox.DONE:
            answer["run_status"] = await self._stopped(message.run_id, deadline)
        return answer

    async def _stopped(self, run_id: str, deadline: float) -> str:
        """The run's status once it has stopped, or at `deadline`."""
        while True:
            status = str((await run_in_threadpool(self.store.get_run, run_id)).status)
            if status in lifecycle.STOPPED or post.CLOCK.monotonic() >= deadline:
                return status
            await asyncio.sleep(WAIT_POLL * 5)


def request_dict(message: MailboxRequest) -> dict[str, Any]:
    return {name: getattr(message, name) for name in post.JSON_FIELDS}
