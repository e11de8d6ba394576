"""Misbehaving user code (issue 9): the runtime keeps its guarantees, other runs keep going.

Steps that never return, block the event loop, raise BaseException or exceptions whose
repr/str raise, mutate what they were given or return huge patches; routers and event
handlers that raise or hang. Each test says what the runtime promises in that case (see
docs/guarantees.md).
"""

from __future__ import annotations

import logging

import pytest

from stageline import Pipeline, PipelineFactory, Stage, Step

pytestmark = pytest.mark.timeout(60)


class Hostile(Exception):
    """An exception whose repr() and str() raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    def __str__(self) -> str:
        raise RuntimeError("str refused")


class HostileHandler:
    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    def __call__(self, event) -> None:
        raise Hostile()


def raise_hostile(state, ctx):
    raise Hostile()


@pytest.mark.parametrize("where", ["step", "router"])
def test_an_exception_whose_repr_raises_fails_the_stage_not_the_runtime(store, where, caplog):
    """Was: repr() of the step's or router's exception raised inside the run's actor, which
    then died with an InternalError and left the run "running" instead of "failed"."""
    if where == "step":
        stage = Stage("s", 1, steps=[Step("bad", raise_hostile, retries=1)])
    else:
        stage = Stage(
            "s",
            1,
            steps=[Step("ok", lambda s, c: None)],
            router=lambda s, r: raise_hostile(s, None),
        )
    run = PipelineFactory(Pipeline("p", [stage]), store=store).prepare()
    run.on("*", HostileHandler())  # a handler that raises one too, and has no repr either
    with caplog.at_level(logging.DEBUG, logger="stageline"):  # log lines format the error
        result = run.run(timeout=10)
    assert result.status == "failed"
    assert "Hostile (its repr() raised)" in str(result.error)
    assert store.get_run(run.run_id).status == "failed"
    assert any("handler_failed" in r.getMessage() for r in caplog.records)
