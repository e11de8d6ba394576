"""Store failures and runtime bugs: reported as exceptions, nothing committed is lost."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from stageline import Pipeline, PipelineFactory, Stage, Step, StoreError
from stageline.core.errors import InternalError

pytestmark = pytest.mark.timeout(30)


class FailingStore:
    """Wraps a store; the `fail_on`-th commit raises `error` instead of committing."""

    def __init__(self, inner, fail_on: int, error: BaseException) -> None:
        self.inner = inner
        self.fail_on = fail_on
        self.error = error
        self.commits = 0

    def commit(self, commit):
        self.commits += 1
        if self.commits == self.fail_on:
            raise self.error
        return self.inner.commit(commit)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def three_stages():
    return Pipeline(
        "p",
        [
            Stage(f"s{i}", i, steps=[Step("w", lambda s, c, i=i: {f"s{i}": True})])
            for i in (1, 2, 3)
        ],
    )


@pytest.mark.parametrize(
    ("error", "raised"),
    [(StoreError("disk full"), StoreError), (RuntimeError("driver bug"), InternalError)],
)
def test_commit_failure_raises_and_keeps_last_commit(store, recorder, error, raised):
    failing = FailingStore(store, fail_on=3, error=error)  # start, s1, then s2 fails
    run = PipelineFactory(three_stages(), store=failing).prepare()
    run.on("*", recorder)
    with pytest.raises(raised):
        run.run(timeout=10)
    info = store.get_run(run.run_id)
    assert info.status == "running"  # resumable from its last commit
    assert info.state == {"s1": True}
    assert info.stage == "s2"
    assert recorder.names()[-1] == "pipeline:failure"
    # the runtime keeps serving other runs on the same store
    assert PipelineFactory(three_stages(), store=store).prepare().run(timeout=10).ok


def test_sqlite_locked_by_another_writer_fails_clearly_then_recovers(tmp_path):
    import sqlite3

    from stageline.stores import SqliteStore

    path = tmp_path / "locked.db"
    store = SqliteStore(path, busy_timeout=0.05)
    factory = PipelineFactory(three_stages(), store=store)
    done = factory.prepare().run(timeout=10)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            factory.prepare()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.get_run(done.run_id).state == {"s1": True, "s2": True, "s3": True}
    assert factory.prepare().run(timeout=10).ok
    store.close()


def test_events_are_logged_through_structlog_with_context(store):
    with capture_logs() as logs:
        result = PipelineFactory(three_stages(), store=store).prepare().run(timeout=10)
    assert result.ok
    names = [entry["event"] for entry in logs]
    assert names[0] == "pipeline:start" and names[-1] == "pipeline:success"
    step_entry = next(e for e in logs if e["event"] == "step:success")
    assert step_entry["log_level"] == "debug"
    assert step_entry["run_id"] == result.run_id
    assert step_entry["stage_id"] == "s1" and step_entry["step_id"] == "w"
    assert step_entry["pipeline_id"] == "p" and step_entry["path"] == "p:s1"
    lifecycle = next(e for e in logs if e["event"] == "stage:success")
    assert lifecycle["log_level"] == "info"


def test_failures_log_at_error_and_retries_at_warning(store):
    def boom(state, ctx):
        raise ValueError("bad")

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("b", boom, retries=1)])])
    with capture_logs() as logs:
        PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    levels = {e["event"]: e["log_level"] for e in logs}
    assert levels["step:retry"] == "warning"
    assert levels["step:failure"] == "error"
    assert levels["pipeline:failure"] == "error"


def test_ctx_log_is_bound_to_run_stage_and_step(store):
    def talk(state, ctx):
        ctx.log.info("hello", extra=1)
        return None

    pipeline = Pipeline("p", [Stage("s", 1, steps=[Step("talk", talk)])])
    with capture_logs() as logs:
        result = PipelineFactory(pipeline, store=store).prepare().run(timeout=10)
    [hello] = [e for e in logs if e["event"] == "hello"]
    assert hello["run_id"] == result.run_id and hello["step_id"] == "talk"
    assert hello["stage_id"] == "s" and hello["extra"] == 1


def test_custom_logger_receives_events(store):
    with capture_logs() as logs:
        custom = structlog.get_logger("mine").bind(app="shop")
        pipeline = three_stages()
        result = PipelineFactory(pipeline, store=store, logger=custom).prepare().run(timeout=10)
    assert result.ok
    assert all(e.get("app") == "shop" for e in logs if e["event"].startswith("stage:"))
