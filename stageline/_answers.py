"""Answers to mailbox requests that the store refused for now, kept and given again.

A daemon answers every request it claimed. When the store fails the answer (a dropped
connection, a locked file), the answer is kept here and written again at the daemon's
next pass, so a claimed request is never left unanswered while its daemon lives.
"""

from __future__ import annotations

from typing import Any

from stageline.core.errors import StagelineError
from stageline.core.store import Store


class Answers:
    """Writes answers to the mailbox; keeps the ones the store refused until it takes them."""

    def __init__(self, store: Store, log: Any) -> None:
        self.store = store
        self.log = log
        self.owed: dict[str, str | None] = {}
        """Request id -> the answer (None: done) the store has not taken yet."""

    def give(self, request_id: str, error: str | None) -> None:
        try:
            self.store.answer_request(request_id, error)
        except StagelineError as exc:
            self.owed[request_id] = error
            self.log.error("request:answer_failed", request_id=request_id, error=str(exc))

    def give_owed(self) -> None:
        """Write the answers the store refused before; those it refuses again stay owed."""
        for request_id, error in list(self.owed.items()):
            del self.owed[request_id]
            self.give(request_id, error)
