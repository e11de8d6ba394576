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


# --- SQLite under real faults: disk full, read-only, locked (issue 9) -------------------


def faulty_pipeline():
    """s1 commits a little; s2 returns a 2 MiB patch (what a full disk refuses); s3."""
    return Pipeline(
        "faulty",
        [
            Stage("s1", 1, steps=[Step("w", count("s1"))]),
            Stage("s2", 2, steps=[Step("w", count("s2", blob=b"x" * (2 << 20)))]),
            Stage("s3", 3, steps=[Step("w", count("s3"))]),
        ],
    )


RAN: dict[str, int] = {}


def count(stage, blob=None):
    def action(state, ctx):
        RAN[f"{ctx.run_id}/{stage}"] = RAN.get(f"{ctx.run_id}/{stage}", 0) + 1
        patch = {stage: state.get(stage, 0) + 1}
        if blob is not None:
            patch["blob"] = blob
        return patch

    return action


def other_runs_keep_going(registry, tmp_path, n=3):
    """Runs on another store of the same registry complete meanwhile."""
    from stageline.stores import SqliteStore

    other = SqliteStore(tmp_path / "other.db")
    try:
        factory = PipelineFactory(three_stages(), store=other, registry=registry)
        assert all(factory.prepare().run(timeout=10).ok for _ in range(n))
    finally:
        other.close()


def fault_then_recover(tmp_path, inject, lift, match):
    """Run the faulty pipeline into `inject`ed trouble at s2, check it fails clearly and
    keeps s1, then `lift` the fault and recover the run: s1 is not run again."""
    from invariants import check_run

    from stageline import ManualClock, Registry
    from stageline.stores import SqliteStore
    from stageline.testing import advance

    store = SqliteStore(tmp_path / "faulty.db", busy_timeout=0.05)
    clock = ManualClock()
    with Registry(clock=clock, lease_ttl=30.0) as registry:
        factory = PipelineFactory(faulty_pipeline(), store=store, registry=registry)
        run = factory.prepare()
        run.on("stage:success", lambda e: inject(store) if e.stage_id == "s1" else None)
        with pytest.raises(StoreError, match=match) as info:
            run.run(timeout=10)
        assert "faulty.db" in str(info.value)  # the message names the store
        other_runs_keep_going(registry, tmp_path)
        lift(store)
        info = store.get_run(run.run_id)
        assert (info.status, info.stage, info.state) == ("running", "s2", {"s1": 1})
        check_run(store, run.run_id)  # nothing committed is lost, the journal agrees
        advance(clock, 31.0, registry)  # the lease this registry took runs out
        (recovered,) = registry.recover(factory)
        assert recovered.wait(10).status == "succeeded"
    final = store.get_run(run.run_id)
    assert {k: final.state[k] for k in ("s1", "s2", "s3")} == {"s1": 1, "s2": 1, "s3": 1}
    assert RAN[f"{run.run_id}/s1"] == 1 and RAN[f"{run.run_id}/s2"] == 2
    check_run(store, run.run_id, ignore=("blob",))
    store.close()


def test_sqlite_disk_full_fails_the_commit_clearly_and_loses_nothing(tmp_path):
    """A full disk, simulated with PRAGMA max_page_count on the store's connection."""

    def fill(store):
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 8}")

    def free(store):
        store._db.execute("PRAGMA max_page_count = 1073741823")

    fault_then_recover(tmp_path, fill, free, "full")


def test_sqlite_read_only_database_fails_the_commit_clearly_and_loses_nothing(tmp_path):
    """A database turned read-only under a running run (PRAGMA query_only: this suite may
    run as root, which ignores file modes)."""
    fault_then_recover(
        tmp_path,
        lambda store: store._db.execute("PRAGMA query_only = ON"),
        lambda store: store._db.execute("PRAGMA query_only = OFF"),
        "readonly",
    )


def test_sqlite_locked_by_another_process_fails_the_commit_clearly_and_loses_nothing(tmp_path):
    import sqlite3

    held = {}

    def lock(store):
        held["db"] = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
        held["db"].execute("BEGIN EXCLUSIVE")

    def unlock(store):
        held["db"].execute("ROLLBACK")
        held["db"].close()

    fault_then_recover(tmp_path, lock, unlock, "locked")


def test_sqlite_opened_read_only_reads_and_refuses_writes_clearly(tmp_path):
    """A store file the process may only read (mode=ro): reads work, writes are StoreError."""
    import sqlite3

    from stageline.stores import SqliteStore

    store = SqliteStore(tmp_path / "ro.db")
    done = PipelineFactory(three_stages(), store=store).prepare().run(timeout=10)
    store._db.close()
    store._db = sqlite3.connect(
        f"file:{store.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    assert store.get_run(done.run_id).status == "succeeded"
    assert [e.name for e in store.read_events(done.run_id)][-1] == "pipeline:success"
    with pytest.raises(StoreError, match="readonly"):
        PipelineFactory(three_stages(), store=store).prepare()
    store.close()


def test_sqlite_lock_held_briefly_is_waited_out_by_busy_timeout(tmp_path):
    """A writer holding the file for a moment (0.3 s, well under busy_timeout) delays the
    run's commit; it does not fail it."""
    import sqlite3
    import threading

    from stageline.stores import SqliteStore

    store = SqliteStore(tmp_path / "busy.db", busy_timeout=20.0)
    factory = PipelineFactory(three_stages(), store=store)
    run = factory.prepare()
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release():
        other.execute("ROLLBACK")
        released.set()

    timer = threading.Timer(0.3, release)  # the fault's duration, not a wait in the test
    timer.start()
    try:
        result = run.run(timeout=30)
    finally:
        timer.join()
        other.close()
    assert released.is_set() and result.ok
    assert store.get_run(run.run_id).state == {"s1": True, "s2": True, "s3": True}
    store.close()


def test_a_store_refusing_a_pause_export_keeps_the_run_live_and_retries(tmp_path):
    """Was: one failed export (the store locked for a moment) dropped the run from the
    registry and lost its artifacts for good. Now the run stays live and the export is
    retried after EXPORT_RETRY seconds; once the store takes it, the bundle is there."""
    import sqlite3

    from stageline import ManualClock, Pause, Registry
    from stageline.actors.pause_windows import EXPORT_RETRY
    from stageline.stores import SqliteStore
    from stageline.testing import advance

    def collect(state, ctx):
        ctx.artifacts.put("note", "keep me")
        return None

    pipeline = Pipeline(
        "export",
        [
            Stage(
                "s1", 1, steps=[Step("w", collect)], router=lambda s, r: Pause("s2", timeout=10.0)
            ),
            Stage("s2", 2, steps=[Step("w", lambda s, c: {"note": c.artifacts.get("note")})]),
        ],
    )
    store = SqliteStore(tmp_path / "export.db", busy_timeout=0.05)
    clock = ManualClock()
    with Registry(clock=clock) as registry:
        factory = PipelineFactory(pipeline, store=store, registry=registry)
        paused = factory.prepare().run(timeout=10)
        other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        try:
            advance(clock, 10.0, registry)  # the window ends; the export meets the lock
            stats = registry.stats()
            assert stats["paused_live"] == 1 and stats["exported"] == 0
        finally:
            other.execute("ROLLBACK")
            other.close()
        advance(clock, EXPORT_RETRY, registry)
        assert registry.stats()["exported"] == 1 and registry.stats()["paused_live"] == 0
    assert store.get_run(paused.run_id).checkpoint.container_bundle is not None
    result = PipelineFactory(pipeline, store=store).resume(paused.run_id).run(timeout=10)
    assert result.state == {"note": "keep me"}
    store.close()
