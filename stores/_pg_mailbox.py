"""The mailbox of a PostgresStore: its requests table, announced to every process by NOTIFY.

Claims take the oldest pending requests with `FOR UPDATE SKIP LOCKED`; posting and
answering send a NOTIFY on the schema's channel in the same statement, which the store's
`Listener` counts and waits on. An answer's NUL characters are written as the two
characters `\\0`. A claimed request that cannot be read is answered "failed" in the
claim's transaction and left out; a request whose arguments are over the store's
`max_state_bytes` (which it could not read back) is refused when posted.
"""

from __future__ import annotations

from typing import Any

from stageline.core.codec import encode
from stageline.core.mailbox import CLAIMED, DONE, FAILED, PENDING, Request

from . import _pg_sql as sql
from ._common import args_fitting, in_batches, request_exists, request_not_found
from ._pg_listener import Listener
from ._pg_pool import Connections
from ._pg_text import check_id, check_text, unstorable
from ._rows import claimed_requests, request_from_row


class Mailbox:
    """Requests in one schema: post, claim, answer, read, prune, and wait for news."""

    def __init__(self, db: Connections, listener: Listener, channel: str, max_bytes: int) -> None:
        self._db = db
        self._listener = listener
        self._channel = channel
        self._max_bytes = max_bytes

    def post(self, request: Request) -> None:
        for value, what in ((request.request_id, "request id"), (request.run_id, "run id")):
            check_id(value, what)
        check_text(request.pipeline_id, "pipeline id", request.run_id)
        values = (
            request.request_id,
            request.kind,
            request.run_id,
            request.posted_at,
            request.pipeline_id,
            args_fitting(request, encode(request.args), self._max_bytes),
            PENDING,
            self._channel,
        )
        if not self._notifying(f"posting request {request.request_id!r}", sql.POST_REQUEST, values):
            raise request_exists(request.request_id)

    def claim(self, claimer: str, limit: int, now: float) -> list[Request]:
        """Claim up to `limit` requests; one that cannot be read is answered "failed" at
        `now` right after the claim, and left out. A batch of only unreadable ones is
        followed by another claim, so poison never makes a daemon wait for its next pass."""
        check_text(claimer, "claimer name", claimer)
        while True:
            claimed, unreadable = self._claim_batch(claimer, limit, now)
            if claimed or not unreadable:
                return claimed

    def _claim_batch(self, claimer: str, limit: int, now: float) -> tuple[list[Request], list[Any]]:
        params = (PENDING, limit, CLAIMED, claimer)
        with self._db.connection("claiming mailbox requests") as conn:
            rows = conn.execute(self._db.sql(sql.CLAIM_REQUESTS), params).fetchall()
        claimed, unreadable = claimed_requests(rows, self._max_bytes)
        if unreadable:  # rare: answered at once (one statement for the claim stays cheap)
            with self._db.connection("answering unreadable requests") as conn:
                for seq, answer in unreadable:
                    values = (FAILED, answer.replace("\x00", "\\0"), now, seq, self._channel)
                    conn.execute(self._db.sql(sql.ANSWER_UNREADABLE), values)
            for _ in unreadable:
                self._listener.own_write()
        return claimed, unreadable

    def answer(self, request_id: str, error: str | None, answered_at: float) -> None:
        if unstorable(request_id):
            raise request_not_found(request_id)
        answer = None if error is None else error.replace("\x00", "\\0")
        status = FAILED if error else DONE
        values = (status, answer, answered_at, request_id, self._channel)
        if not self._notifying(f"answering request {request_id!r}", sql.ANSWER_REQUEST, values):
            raise request_not_found(request_id)

    def _notifying(self, what: str, statement: str, values: tuple[Any, ...]) -> bool:
        """Run a statement that NOTIFYs if it wrote; True if it did (and count the write)."""
        with self._db.connection(what) as conn:
            row = conn.execute(self._db.sql(statement), values).fetchone()
        if row is None:
            return False
        self._listener.own_write()
        return True

    def prune(self, answered_before: float) -> int:
        statement = self._db.sql(sql.PRUNE_REQUESTS)

        def delete_batch(limit: int) -> int:
            with self._db.connection("pruning answered requests") as conn:
                params = (DONE, FAILED, answered_before, limit)
                return int(conn.execute(statement, params).rowcount)

        return in_batches(delete_batch)

    def get(self, request_id: str) -> Request:
        if unstorable(request_id):
            raise request_not_found(request_id)
        rows = self._db.query(f"reading request {request_id!r}", sql.GET_REQUEST, (request_id,))
        if not rows:
            raise request_not_found(request_id)
        return request_from_row(rows[0], self._max_bytes)

    def version(self) -> int:
        self._db.fail_if_closed()
        return self._listener.version(self._db.where)

    def wait(self, timeout: float, *, answers: bool) -> bool:
        self._db.fail_if_closed()
        return self._listener.wait(timeout, self._db.where, answers=answers)
