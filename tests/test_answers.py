"""A daemon never leaves a claimed request unanswered while it lives: an answer the store
refuses (a dropped connection) is kept and written at the daemon's next pass."""

from __future__ import annotations

import time

import pytest

from stageline import Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.core.errors import StoreError
from stageline.core.mailbox import DONE, Request
from stageline.daemon import Daemon
from stageline.stores import MemoryStore

pytestmark = pytest.mark.timeout(30)


class FlakyAnswers(MemoryStore):
    """Refuses the first `failures` answers, as a store whose connection just dropped."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def answer_request(self, request_id: str, error: str | None = None) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("answering failed: terminating connection due to administrator")
        super().answer_request(request_id, error)


def test_an_answer_the_store_refused_is_given_at_the_next_pass():
    store = FlakyAnswers(failures=2)
    pipeline = Pipeline("p", [Stage("a", 1, steps=[Step("a", lambda s, c: {"a": 1})])])
    with Registry() as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        daemon = Daemon({"p": factory}, store, registry)
        store.post_request(Request("q1", "start", "r1", time.time(), pipeline_id="p"))
        assert daemon.poll_once() == 1  # acted on; its answer refused
        assert store.get_request("q1").status == "claimed"
        daemon.poll_once()  # refused again: still owed
        assert store.get_request("q1").status == "claimed"
        daemon.poll_once()
        assert store.get_request("q1").status == DONE
        assert daemon.answers.owed == {}
