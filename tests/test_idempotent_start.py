"""Idempotent starts (SPEC section 15): `prepare(run_id=..., if_exists="attach")`, attached
RunContexts, `stageline start --if-exists attach`, and a start request posted twice.

Racing prepares run in threads (every store) and in processes (SQLite file, PostgreSQL);
the processes are this file run as a script (see `worker` at the end), released together
by a "go" line on stdin. Tests wait on `wait()`, futures and subprocesses, never a sleep.

    python tests/test_idempotent_start.py STORE_URL RUN_ID   # one racing worker
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import stageline
from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.core.errors import (
    RunExistsError,
    RunNotFound,
    RunStateError,
    StageError,
    StagelineError,
)
from stageline.core.mailbox import DONE, FAILED, Request
from stageline.core.results import RunResult
from stageline.core.store import Store
from stageline.stores import SqliteStore
from stageline.stores.url import open_store

pytestmark = pytest.mark.timeout(60)

ROOT = Path(stageline.__file__).resolve().parent.parent


def _fail(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    raise ValueError("no stock")


def one(pipeline_id: str, action: Any, router: Any = None) -> Pipeline:
    return Pipeline(
        pipeline_id, [Stage("one", order=1, steps=[Step("one", action)], router=router)]
    )


quick = one("quick", lambda s, c: {"n": s.get("n", 0) + 1})
other = one("other", lambda s, c: {"other": True})
broken = one("broken", _fail)
asks = Pipeline("asks", [
    Stage("ask", order=1, steps=[Step("ask", lambda s, c: {"asked": True})],
          router=lambda s, r: Pause("ship", timeout=60)),
    Stage("ship", order=2, steps=[Step("ship", lambda s, c: {"shipped": True})]),
])  # fmt: skip


def starts(store: Store, run_id: str) -> int:
    return sum(e.name == "pipeline:start" for e in store.read_events(run_id))


def run_or_wait(context: Any, timeout: float = 30.0) -> RunResult:
    """Run it if this context may start it, else wait for whoever does (the usual pattern)."""
    try:
        result: RunResult = context.run(timeout)
    except RunStateError:
        result = context.wait(timeout)
    return result


# --- prepare(if_exists=...) ----------------------------------------------------------------


def test_prepare_twice_with_attach_makes_one_run(store: Store) -> None:
    factory = PipelineFactory(quick, store=store)
    first = factory.prepare(run_id="r1", if_exists="attach")
    second = factory.prepare(run_id="r1", if_exists="attach")
    assert (second.run_id, second.pipeline_id, second.status) == ("r1", "quick", "pending")
    assert first.run().status == "succeeded"
    result = second.wait(10)
    assert (result.run_id, result.status, result.state) == ("r1", "succeeded", {"n": 1})
    assert second.status == "succeeded" and second.result == result
    assert [r.run_id for r in store.list_runs()] == ["r1"] and starts(store, "r1") == 1


def test_raise_is_the_default(store: Store) -> None:
    factory = PipelineFactory(quick, store=store)
    factory.prepare(run_id="r1")
    with pytest.raises(RunExistsError):
        factory.prepare(run_id="r1")
    with pytest.raises(RunExistsError):
        factory.prepare(run_id="r1", if_exists="raise")


def test_attach_to_another_pipelines_run_is_an_error(store: Store) -> None:
    PipelineFactory(other, store=store).prepare(run_id="r1")
    with pytest.raises(StagelineError, match=r"'other'.*'quick'"):
        PipelineFactory(quick, store=store).prepare(run_id="r1", if_exists="attach")


def test_an_unknown_if_exists_word_is_an_error() -> None:
    with pytest.raises(StagelineError, match=r"'raise', 'attach'.*'replace'"):
        PipelineFactory(quick).prepare(run_id="r1", if_exists="replace")


def test_attach_without_a_run_id_prepares_a_new_run() -> None:
    factory = PipelineFactory(quick)
    first = factory.prepare(if_exists="attach")
    second = factory.prepare(if_exists="attach")
    assert first.run_id != second.run_id
    assert second.run().status == "succeeded"


def test_an_attached_context_starts_nothing(store: Store) -> None:
    factory = PipelineFactory(quick, store=store)
    factory.prepare(run_id="r1")
    attached = factory.prepare(run_id="r1", if_exists="attach")
    for call in (attached.run, attached.start):
        with pytest.raises(RunStateError, match=r"wait\(\)"):
            call()
    with pytest.raises(RunStateError, match="read_events"):
        attached.on("*", print)
    with pytest.raises(TimeoutError, match="'r1'"):
        attached.wait(0.05)  # nobody started it
    assert attached.result is None and store.get_run("r1").status == "pending"


def test_attached_results_of_paused_and_failed_runs(store: Store) -> None:
    PipelineFactory(asks, store=store).prepare(run_id="p").run()
    paused = PipelineFactory(asks, store=store).prepare(run_id="p", if_exists="attach").wait(10)
    assert paused.status == "paused" and paused.checkpoint.resume_at == "ship"
    assert paused.state == {"asked": True}

    PipelineFactory(broken, store=store).prepare(run_id="f").run()
    failed = PipelineFactory(broken, store=store).prepare(run_id="f", if_exists="attach").wait(10)
    assert failed.status == "failed" and isinstance(failed.error, StageError)
    assert "no stock" in str(failed.error.steps[0].message)
    assert failed.attempts == (failed.error,)


def test_an_attached_context_aborts_the_run(store: Store) -> None:
    factory = PipelineFactory(asks, store=store)
    factory.prepare(run_id="p").run()
    attached = factory.prepare(run_id="p", if_exists="attach")
    attached.abort("not needed")
    result = attached.wait(10)
    assert result.status == "aborted" and "not needed" in str(result.error)


def test_attach_to_a_run_this_registry_drives_gives_its_own_context(store: Store) -> None:
    with Registry() as registry:
        factory = PipelineFactory(quick, store=store, registry=registry)
        prepared = factory.prepare(run_id="r1")
        early = factory.prepare(run_id="r1", if_exists="attach")  # not started yet: the store
        assert early is not prepared
        prepared.start()
        assert factory.prepare(run_id="r1", if_exists="attach") is prepared
        assert early.wait(10) == prepared.wait(10)
        assert prepared.wait(10).status == "succeeded"


# --- races ---------------------------------------------------------------------------------


class LateStore:
    """A store whose first `get_run` misses the run: as if another process created it
    between this prepare's look and its `create_run`."""

    def __init__(self, store: Store) -> None:
        self.store, self.missed = store, False

    def get_run(self, run_id: str) -> Any:
        if not self.missed:
            self.missed = True
            raise RunNotFound(run_id)
        return self.store.get_run(run_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_the_loser_of_create_run_attaches(store: Store) -> None:
    PipelineFactory(quick, store=store).prepare(run_id="r1").run()
    late = LateStore(store)
    attached = PipelineFactory(quick, store=late).prepare(run_id="r1", if_exists="attach")  # type: ignore[arg-type]
    assert late.missed and attached.wait(10).status == "succeeded"
    with pytest.raises(RunExistsError):
        PipelineFactory(quick, store=LateStore(store)).prepare(run_id="r1")  # type: ignore[arg-type]


def test_attach_racing_from_8_threads_makes_one_run(store: Store) -> None:
    with Registry() as registry:
        factory = PipelineFactory(quick, store=store, registry=registry)
        barrier = threading.Barrier(8)

        def prepare_and_wait(_: int) -> tuple[str, RunResult]:
            barrier.wait(10)
            context = factory.prepare(run_id="raced", if_exists="attach")
            return context.run_id, run_or_wait(context)

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(prepare_and_wait, range(8)))
    assert {run_id for run_id, _ in outcomes} == {"raced"}
    assert Counter(result.status for _, result in outcomes) == {"succeeded": 8}
    assert [r.run_id for r in store.list_runs()] == ["raced"]
    assert starts(store, "raced") == 1


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL the racing processes share: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_attach_racing_from_4_processes_makes_one_run(store_url: str) -> None:
    open_store(store_url).close()  # the tables, before the workers race to make them
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, __file__, store_url, "raced"]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [subprocess.Popen(command, text=True, env=env, **pipes) for _ in range(4)]
    try:
        for proc in procs:  # every worker set up, then all released together
            ready, _, _ = select.select([proc.stdout], [], [], 30.0)
            assert ready and proc.stdout.readline() == "ready\n", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=45) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out) == {"run_id": "raced", "status": "succeeded", "state": {"n": 1}}
    store = open_store(store_url)
    try:
        assert [r.run_id for r in store.list_runs()] == ["raced"]
        assert starts(store, "raced") == 1
    finally:
        store.close()


# --- the CLI --------------------------------------------------------------------------------


def cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STAGELINE_STORE": f"sqlite:///{db}"}
    return subprocess.run(
        [sys.executable, "-m", "stageline", *args],
        env=env,
        cwd=db.parent,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def stored_run(tmp_path: Path) -> Path:
    """A SQLite store holding run "r1" of `quick`, succeeded (no daemon needed)."""
    db = tmp_path / "runs.db"
    store = SqliteStore(db)
    try:
        PipelineFactory(quick, store=store).prepare(run_id="r1").run()
    finally:
        store.close()
    return db


def test_cli_start_if_exists_attach_prints_the_run(stored_run: Path) -> None:
    done = cli("start", "quick", "--run-id", "r1", "--if-exists", "attach", db=stored_run)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "attached to run r1 (pipeline quick), status succeeded\n"

    as_json = cli("start", "quick", "--run-id", "r1", "--if-exists", "attach", "--json",
                  db=stored_run)  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    line = json.loads(as_json.stdout)
    assert (line["run_id"], line["status"], line["run_status"]) == ("r1", "attached", "succeeded")

    followed = cli("start", "quick", "--run-id", "r1", "--if-exists", "attach", "--follow",
                   db=stored_run)  # fmt: skip
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines()[-1] == "run r1 succeeded"


def test_cli_start_of_a_stored_run_id_fails_with_one_line(stored_run: Path) -> None:
    for extra in ((), ("--if-exists", "raise")):
        failed = cli("start", "quick", "--run-id", "r1", *extra, db=stored_run)
        assert failed.returncode != 0 and failed.stdout == ""
        assert len(failed.stderr.splitlines()) == 1, failed.stderr
        assert "'r1' already exists" in failed.stderr and "--if-exists attach" in failed.stderr
    wrong = cli("start", "other", "--run-id", "r1", "--if-exists", "attach", db=stored_run)
    assert wrong.returncode != 0 and len(wrong.stderr.splitlines()) == 1, wrong.stderr
    assert "pipeline 'quick', not 'other'" in wrong.stderr


# --- the daemon -----------------------------------------------------------------------------


def test_a_start_request_posted_twice_makes_one_run(store: Store) -> None:
    from stageline.daemon import Daemon, bind_factories

    with Registry() as registry:
        factories = bind_factories(
            [PipelineFactory(quick), PipelineFactory(other)], store, registry
        )
        started: list[Any] = []
        daemon = Daemon(factories, store, registry, on_start=started.append)
        for n, pipeline_id in enumerate(("quick", "quick", "other")):
            request = Request(f"req-{n}", "start", "r1", time.time(), pipeline_id=pipeline_id)
            store.post_request(request)
        assert [daemon.poll_once() for _ in range(4)] == [1, 1, 1, 0]  # one a pass
        answers = [store.get_request(f"req-{n}") for n in range(3)]
        assert [a.status for a in answers] == [DONE, DONE, FAILED]
        assert "'quick', not of 'other'" in str(answers[2].answer)
        assert [c.run_id for c in started] == ["r1"]
        assert started[0].wait(10).status == "succeeded"
    assert [r.run_id for r in store.list_runs()] == ["r1"] and starts(store, "r1") == 1


# --- the racing worker (this file run as a script) ------------------------------------------


def worker(url: str, run_id: str) -> None:
    """Prepare `run_id` with attach once released; run or wait it; print its result."""
    store = open_store(url)
    factory = PipelineFactory(quick, store=store)
    print("ready", flush=True)
    sys.stdin.readline()
    result = run_or_wait(factory.prepare(run_id=run_id, if_exists="attach"))
    print(json.dumps({"run_id": result.run_id, "status": result.status, "state": result.state}))
    store.close()


if __name__ == "__main__":
    worker(*sys.argv[1:])
