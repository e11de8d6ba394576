"""Subprocess for tests/test_crash.py: runs one pipeline to the end unless it is killed.

    python tests/crash_worker.py DB_PATH RUN_ID
    python tests/crash_worker.py STORE_URL RUN_ID    # e.g. postgresql://...?schema=...

The pipeline has STAGES stages ("s1".."s30", in order, no routers); each stage has
STEPS concurrent steps, and step j of stage k returns {"s{k}": {"j{j}": k}, "count": k}.
So a stage that was committed left exactly STEPS keys under "s{k}" and set "count" to k;
a torn stage would show fewer. Steps burn a little CPU so that a SIGKILL is as likely to
land while steps run or while a stage commits as between stages.

It prints one line, "ready", to stdout once it is imported and about to open the store, so
the test can time its kill from the start of the run rather than from process start
(interpreter start-up time varies a lot on a busy machine).

Exit status: 0 when the run succeeded, 1 otherwise (the result is printed to stderr).
"""

from __future__ import annotations

import sys

from stageline import Pipeline, PipelineFactory, Stage, Step
from stageline.stores import SqliteStore
from stageline.stores.url import open_store

STAGES = 30
STEPS = 3
WORK = 50_000  # iterations of busy work per step: a couple of milliseconds


def make_step(stage: int, step: int):
    def action(state, ctx):
        acc = 0
        for i in range(WORK):
            acc ^= i * stage
        return {f"s{stage}": {f"j{step}": stage}, "count": stage}

    return action


def build_pipeline() -> Pipeline:
    return Pipeline(
        "crash",
        [
            Stage(
                f"s{k}",
                k,
                steps=[Step(f"j{j}", make_step(k, j)) for j in range(STEPS)],
            )
            for k in range(1, STAGES + 1)
        ],
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} DB_PATH RUN_ID", file=sys.stderr)
        return 2
    db_path, run_id = argv[1], argv[2]
    pipeline = build_pipeline()
    print("ready", flush=True)
    store = open_store(db_path) if "://" in db_path else SqliteStore(db_path)
    try:
        factory = PipelineFactory(pipeline, store=store)
        result = factory.prepare(run_id=run_id).run(timeout=60)
    finally:
        store.close()
    if result.status != "succeeded":
        print(f"run {run_id} ended {result.status}: {result.error!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
