"""Subprocess for tests/test_children_processes.py: child pipelines across processes.

    python tests/children_worker.py crash  STORE RUN_ID             # run "crashfan" to its end
    python tests/children_worker.py pause  STORE RUN_ID             # run "pausefan" to its pause
    python tests/children_worker.py resume STORE RUN_ID PATCH_JSON  # slow-path resume "pausefan"

STORE is a SQLite file's path or a store URL (postgresql://...?schema=..., stores/url.py).

"crashfan": stage "fan" runs CHILDREN child pipelines ("c1".."c3"), each with STAGES
stages of STEPS concurrent steps; step j of stage k of child c returns
{c: {"s<k>": {"j<j>": k}}}. So a committed child stage left exactly STEPS keys under
state[c]["s<k>"]; a torn one would show fewer. Then stage "end" sets {"ended": True}.
Steps burn a little CPU so a SIGKILL lands while steps run as well as while stages commit.
`crash` prints "ready" just before it opens the store.

"pausefan": stage "fan" runs "billing" (stage "charge", whose router pauses the child at
"confirm") and "shipping" (one stage "pack"); then stage "done". Each step adds its own
name under state["ran_<pid>"], so the test sees which process ran what.

Every mode prints one JSON line: {"status", "state", "steps"}; "steps" lists the
[pipeline_id, stage_id] of every step:start this process saw.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from stageline import Pause, Pipeline, PipelineFactory, Stage, Step
from stageline.stores import SqliteStore
from stageline.stores.url import open_store
from stageline.testing import EventRecorder

CHILDREN = ("c1", "c2", "c3")
STAGES = 8
STEPS = 2
WORK = 100_000


def busy_step(child: str, stage: int, step: int) -> Any:
    def action(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        acc = 0
        for i in range(WORK):
            acc ^= i * stage
        return {child: {f"s{stage}": {f"j{step}": stage}}}

    return action


def crash_pipeline() -> Pipeline:
    children = [
        Pipeline(
            child,
            [
                Stage(
                    f"s{k}", k, steps=[Step(f"j{j}", busy_step(child, k, j)) for j in range(STEPS)]
                )
                for k in range(1, STAGES + 1)
            ],
        )
        for child in CHILDREN
    ]
    return Pipeline(
        "crashfan",
        [
            Stage("fan", 1, pipelines=children),
            Stage("end", 2, steps=[Step("end", lambda s, c: {"ended": True})]),
        ],
    )


def mark(name: str) -> Any:
    def action(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
        patch: dict[str, Any] = {f"ran_{os.getpid()}": {name: True}}
        if name == "confirm":
            patch["confirmed"] = state.get("approval")
        return patch

    return action


def pause_pipeline() -> Pipeline:
    billing = Pipeline(
        "billing",
        [
            Stage("charge", 1, steps=[Step("charge", mark("charge"))],
                  router=lambda s, r: Pause("confirm")),
            Stage("confirm", 2, steps=[Step("confirm", mark("confirm"))]),
        ],
    )  # fmt: skip
    shipping = Pipeline("shipping", [Stage("pack", 1, steps=[Step("pack", mark("pack"))])])
    return Pipeline(
        "pausefan",
        [
            Stage("fan", 1, pipelines=[billing, shipping]),
            Stage("done", 2, steps=[Step("done", mark("done"))]),
        ],
    )


def report(context: Any, recorder: EventRecorder) -> int:
    result = context.run(timeout=60)
    steps = [[e.path[-1].pipeline_id, e.stage_id] for e in recorder.of("step:start")]
    print(json.dumps({"status": result.status, "state": result.state, "steps": steps}))
    return 0 if result.status in ("succeeded", "paused") else 1


def main(argv: list[str]) -> int:
    mode, db, run_id = argv[1], argv[2], argv[3]
    if mode == "crash":
        print("ready", flush=True)
    pipeline = crash_pipeline() if mode == "crash" else pause_pipeline()
    store = open_store(db) if "://" in db else SqliteStore(db)
    try:
        factory = PipelineFactory(pipeline, store=store)
        if mode == "resume":
            context = factory.resume(run_id, patch=json.loads(argv[4]))
        else:
            context = factory.prepare(run_id=run_id)
        return report(context, EventRecorder(context))
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
