"""Subprocess for tests/test_crash_recovery.py: start a run, or recover it, under a Registry.

    python tests/recover_worker.py DB_PATH RUN_ID LOG_PATH CLOCK_OFFSET

If the store has no run RUN_ID, it prepares and runs it; otherwise it calls
`registry.recover(factory)` and waits for what it took over. The pipeline has STAGES
stages of STEPS concurrent steps; step j of stage k appends the line "k j" to LOG_PATH
(one O_APPEND write) before it returns {"s{k}": {"j{j}": k}, "count": k}, so the log
counts every step execution, including those of stages a kill cut short.

CLOCK_OFFSET (seconds) is added to the wall clock: each worker of the test runs an hour
ahead of the one before, so the leases of a killed worker have run out for the next one
without anybody waiting.

Prints "ready" once imported; exits 0 when the run succeeded.
"""

from __future__ import annotations

import os
import sys

from stageline import Pipeline, PipelineFactory, Registry, RunNotFound, Stage, Step, SystemClock
from stageline.stores import SqliteStore

STAGES = 12
STEPS = 3
WORK = 40_000


class OffsetClock(SystemClock):
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def wall(self) -> float:
        return super().wall() + self.offset


def make_step(log: int, stage: int, step: int):
    def action(state, ctx):
        acc = 0
        for i in range(WORK):
            acc ^= i * stage
        os.write(log, f"{stage} {step}\n".encode())
        return {f"s{stage}": {f"j{step}": stage}, "count": stage}

    return action


def build_pipeline(log: int) -> Pipeline:
    return Pipeline(
        "recover",
        [
            Stage(f"s{k}", k, steps=[Step(f"j{j}", make_step(log, k, j)) for j in range(STEPS)])
            for k in range(1, STAGES + 1)
        ],
    )


def main(argv: list[str]) -> int:
    db_path, run_id, log_path, offset = argv[1], argv[2], argv[3], float(argv[4])
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pipeline = build_pipeline(log)
    print("ready", flush=True)
    store = SqliteStore(db_path)
    try:
        with Registry(clock=OffsetClock(offset), lease_ttl=30.0) as registry:
            factory = PipelineFactory(pipeline, store=store, registry=registry)
            try:
                store.load_run(run_id)
            except RunNotFound:
                results = [factory.prepare(run_id=run_id).run(timeout=60)]
            else:
                results = [context.wait(60) for context in registry.recover(factory)]
    finally:
        store.close()
    if [r.status for r in results if r.run_id == run_id] != ["succeeded"]:
        print(f"run {run_id}: {results!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
