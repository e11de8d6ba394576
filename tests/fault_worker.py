"""Subprocess for tests/test_crash_faults.py: pause exports, resumes and retries to kill -9.

    python tests/fault_worker.py pause  STORE RUN_ID...  # run each to its pause; exported at once
    python tests/fault_worker.py resume STORE RUN_ID...  # slow-path resume each paused run
    python tests/fault_worker.py retry  STORE RUN_ID...  # registry.retry each failed run

STORE is a SQLite file's path or a store URL (postgresql://...?schema=..., stores/url.py).

It prints "ready" once the store is open, "at pause" / "at resume" / "at retry" just
before the moment of interest of each run (its pause commit and export, its resume claim,
its retry claim), and "done RUN_ID" after each run, so the test can kill it a random few
milliseconds after the moment of interest of a chosen run.

The pipeline ("faults"): s1 puts a large artifact and counts itself in state, then pauses
(`Pause("s2", timeout=0)` when the run's `mode` is "pause" or "resume": the registry
exports the bundle at once); s2 fails while `FAIL` is true (the test process sets it to
make failed runs to retry), else counts itself; s3 counts itself. Every stage's patch is
`{"sK": {"n": previous n + 1}}`, so a stage committed twice shows n == 2.
"""

from __future__ import annotations

import sys
from typing import Any

from stageline import Pause, Pipeline, PipelineFactory, Registry, Stage, Step
from stageline.stores import SqliteStore
from stageline.stores.url import open_store

FAIL = False
WORKER = False  # True in the worker process: it announces the moments to kill at
BLOB = bytes(range(256)) * 1024  # 256 KiB: an export takes a while, a good place to die


def count(stage: str):
    def action(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if stage == "s1":
            ctx.artifacts.put("blob", BLOB)
        if stage == "s2" and FAIL:
            raise RuntimeError("failing on purpose")
        return {stage: {"n": state.get(stage, {}).get("n", 0) + 1}}

    return action


def route(state: dict[str, Any], results: dict[str, Any]) -> Any:
    if state["mode"] == "pause" and WORKER:
        print("at pause", flush=True)  # the pause commit and the export come next
    return Pause("s2", timeout=0) if state["mode"] in ("pause", "resume") else None


def build_pipeline() -> Pipeline:
    return Pipeline(
        "faults",
        [
            Stage("s1", 1, steps=[Step("s1", count("s1"))], router=route),
            Stage("s2", 2, steps=[Step("s2", count("s2"))]),
            Stage("s3", 3, steps=[Step("s3", count("s3"))]),
        ],
    )


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[1] not in ("pause", "resume", "retry"):
        print(__doc__, file=sys.stderr)
        return 2
    global WORKER
    WORKER = True
    mode, db, run_ids = argv[1], argv[2], argv[3:]
    pipeline = build_pipeline()
    store = open_store(db) if "://" in db else SqliteStore(db)
    registry = Registry(default_pause_timeout=0)
    print("ready", flush=True)
    try:
        factory = PipelineFactory(
            pipeline, store=store, registry=registry, initial_state={"mode": mode}
        )
        for run_id in run_ids:
            if mode == "pause":
                result = factory.prepare(run_id=run_id).run(timeout=30)
                expected = "paused"
            elif mode == "resume":
                print("at resume", flush=True)  # the claim (compare-and-set) comes next
                result = factory.resume(run_id, patch={"resumed": True}).run(timeout=30)
                expected = "succeeded"
            else:
                print("at retry", flush=True)
                result = registry.retry(run_id, factory).wait(30)
                expected = "succeeded"
            if result.status != expected:
                print(f"run {run_id} ended {result.status}: {result.error!r}", file=sys.stderr)
                return 1
            print(f"done {run_id}", flush=True)
    finally:
        registry.stop()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
