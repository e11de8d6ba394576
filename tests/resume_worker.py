"""Subprocess for tests/test_resume_processes.py: pause runs in one process, resume in others.

    python tests/resume_worker.py pause  STORE RUN_ID...          # prepare and run each to its pause
    python tests/resume_worker.py resume STORE RUN_ID PATCH_JSON  # slow-path resume one run
    python tests/resume_worker.py race   NAME STORE RUN_ID...     # slow-path resume each, racing
    python tests/resume_worker.py live   NAME STORE RUN_ID...     # pause each live in a Registry,
                                                                  # then fast-path resume each

STORE is a SQLite file's path or a store URL (postgresql://...?schema=..., stores/url.py).

The pipeline ("handoff"): stage s1 puts artifacts and pauses with
`Pause("s3", persist=True)` (so the bundle is in the checkpoint from the pause commit on);
s2 is skipped by the resume; s3 reads the artifacts back and records who ran it.

`race` and `live` print "ready" once set up (store open, factory built and, for `live`, the
runs paused and held by the registry), then wait for one line on stdin before racing, so
that several workers released together really overlap. Each then tries every run in the
order given: a win starts the run at once (the next claim does not wait for it); a loss is
RunNotPaused. After all claims, the won runs are waited for and one JSON line per run is
printed: {"run_id", "outcome": "won"|"lost"|"error", "status", "steps", "fast", "error"}.
"steps" lists the [stage_id, step_id] of every step:start this process saw for that run.

`pause` prints {"run_id", "status"} per run; `resume` prints {"run_id", "status", "state",
"steps"} ("state" with non-JSON values as their repr). Exit status 0 unless a run ended
other than expected (details on stderr).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from decimal import Decimal
from typing import Any

from stageline import Pause, Pipeline, PipelineFactory, Registry, RunNotPaused, Stage, Step
from stageline.core.store import Store
from stageline.stores import SqliteStore
from stageline.stores.url import open_store
from stageline.testing import EventRecorder

PIPELINE_ID = "handoff"
NOTE = {
    "items": [1, 2, 3],
    "blob": b"\x00\x01\xfe\xff",
    "price": Decimal("12.50"),
    "when": dt.datetime(2024, 9, 17, 12, 30, tzinfo=dt.UTC),
    "text": "h\u00e9llo",
}
SHARED = "run-wide"


def collect(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    ctx.artifacts.put("note", NOTE)
    ctx.artifacts.root.put("shared", SHARED)
    return {"collected_by": os.getpid(), "s1_runs": state.get("s1_runs", 0) + 1}


def ask(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"asked": True}


def label(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {
        "note": ctx.artifacts.get("note"),
        "shared": ctx.artifacts.root.get("shared"),
        "shipped_by": os.getpid(),
        "s3_runs": state.get("s3_runs", 0) + 1,
    }


def build_pipeline() -> Pipeline:
    return Pipeline(
        PIPELINE_ID,
        [
            Stage(
                "s1",
                1,
                steps=[Step("collect", collect)],
                router=lambda state, results: Pause("s3", persist=True),
            ),
            Stage("s2", 2, steps=[Step("ask", ask)]),
            Stage("s3", 3, steps=[Step("label", label)]),
        ],
    )


def open_location(db: str) -> Store:
    """The store at `db`: a SQLite file's path, or a store URL (postgresql://...)."""
    return open_store(db) if "://" in db else SqliteStore(db)


def _steps(recorder: EventRecorder) -> list[list[str | None]]:
    return [[e.stage_id, e.step_id] for e in recorder.of("step:start")]


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, default=repr), flush=True)


def pause(db: str, run_ids: list[str]) -> int:
    store = open_location(db)
    try:
        factory = PipelineFactory(build_pipeline(), store=store)
        for run_id in run_ids:
            result = factory.prepare(run_id=run_id).run(timeout=30)
            _emit({"run_id": run_id, "status": result.status})
            if result.status != "paused":
                print(f"run {run_id} ended {result.status}: {result.error!r}", file=sys.stderr)
                return 1
    finally:
        store.close()
    return 0


def resume(db: str, run_id: str, patch: dict[str, Any]) -> int:
    store = open_location(db)
    try:
        factory = PipelineFactory(build_pipeline(), store=store)
        context = factory.resume(run_id, patch=patch)
        recorder = EventRecorder(context)
        result = context.run(timeout=30)
    finally:
        store.close()
    _emit(
        {
            "run_id": run_id,
            "status": result.status,
            "state": result.state,
            "steps": _steps(recorder),
        }
    )
    if result.status != "succeeded":
        print(f"run {run_id} ended {result.status}: {result.error!r}", file=sys.stderr)
        return 1
    return 0


def race(name: str, db: str, run_ids: list[str], *, live: bool) -> int:
    store = open_location(db)
    registry = Registry(default_pause_timeout=3600.0) if live else None
    try:
        factory = PipelineFactory(build_pipeline(), store=store, registry=registry)
        held = {}
        if live:  # pause every run here, so the registry holds it in its live window
            for run_id in run_ids:
                context = factory.prepare(run_id=run_id)
                result = context.run(timeout=30)
                if result.status != "paused":
                    print(f"run {run_id} ended {result.status}: {result.error!r}", file=sys.stderr)
                    return 1
                held[run_id] = context
            stats = registry.stats() if registry is not None else {}
            if stats.get("paused_live") != len(run_ids):
                print(f"registry does not hold every run live: {stats}", file=sys.stderr)
                return 1
        print("ready", flush=True)
        if sys.stdin.readline() != "go\n":
            print("no go signal on stdin", file=sys.stderr)
            return 1

        outcomes: dict[str, dict[str, Any]] = {}
        running = []
        for run_id in run_ids:
            try:
                context = factory.resume(run_id, patch={"winner": name})
            except RunNotPaused:
                outcomes[run_id] = {"outcome": "lost"}
                continue
            except Exception as exc:
                outcomes[run_id] = {"outcome": "error", "error": repr(exc)}
                continue
            recorder = EventRecorder(context)
            outcomes[run_id] = {"outcome": "won", "fast": context is held.get(run_id)}
            running.append((run_id, context.start(), recorder))
        for run_id, future, recorder in running:
            try:
                result = future.result(timeout=30)
            except Exception as exc:
                outcomes[run_id].update(outcome="error", error=repr(exc))
                continue
            outcomes[run_id].update(status=result.status, steps=_steps(recorder))
            if result.error is not None:
                outcomes[run_id]["error"] = repr(result.error)
        for run_id in run_ids:
            _emit({"run_id": run_id, "worker": name, **outcomes[run_id]})
    finally:
        if registry is not None:
            registry.stop()
        store.close()
    return 0


def main(argv: list[str]) -> int:
    mode, args = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if mode == "pause" and len(args) >= 2:
        return pause(args[0], args[1:])
    if mode == "resume" and len(args) == 3:
        return resume(args[0], args[1], json.loads(args[2]))
    if mode in ("race", "live") and len(args) >= 3:
        return race(args[0], args[1], args[2:], live=mode == "live")
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
