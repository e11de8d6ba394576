"""Subprocess for tests/test_crash_recovery.py: runs under a Registry, or recovers them.

    python tests/recover_worker.py run DB_PATH LOG_DIR CLOCK_OFFSET RUN_ID
    python tests/recover_worker.py orphans DB_PATH LOG_DIR CLOCK_OFFSET N
    python tests/recover_worker.py recover DB_PATH LOG_DIR CLOCK_OFFSET

`run`: if the store has no run RUN_ID, prepare and run it; otherwise `registry.recover`
and wait for what it took over. `orphans`: start N runs whose step j0 of stage s2 never
returns, print "blocked" once all are stuck there, and wait to be killed. `recover`:
once a line arrives on stdin, `registry.recover`, print "took RUN_ID" for each run taken,
and wait for them.

The pipeline has STAGES stages of STEPS concurrent steps; step j of stage k appends the
line "k j" to LOG_DIR/RUN_ID.log (one O_APPEND write) before it returns
{"s{k}": {"j{j}": k}, "count": k}, so the logs count every step execution, including
those of stages a kill cut short.

CLOCK_OFFSET (seconds) is added to the wall clock: a worker an hour ahead of a killed one
sees the killed worker's leases as run out, without anybody waiting.

Prints "ready" once imported; exits 0 when every run it drove succeeded.
"""

from __future__ import annotations

import os
import sys
import threading

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


def make_step(log_dir: str, stage: int, step: int, stuck: threading.Semaphore | None):
    def action(state, ctx):
        acc = 0
        for i in range(WORK):
            acc ^= i * stage
        log = os.open(
            os.path.join(log_dir, f"{ctx.run_id}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
        try:
            os.write(log, f"{stage} {step}\n".encode())
        finally:
            os.close(log)
        if stuck is not None and stage == 2 and step == 0:
            stuck.release()
            threading.Event().wait()  # never returns: the process is killed here
        return {f"s{stage}": {f"j{step}": stage}, "count": stage}

    return action


def build_pipeline(log_dir: str, stuck: threading.Semaphore | None = None) -> Pipeline:
    return Pipeline(
        "recover",
        [
            Stage(
                f"s{k}",
                k,
                steps=[Step(f"j{j}", make_step(log_dir, k, j, stuck)) for j in range(STEPS)],
            )
            for k in range(1, STAGES + 1)
        ],
    )


def main(argv: list[str]) -> int:
    mode, db_path, log_dir, offset, arg = [*argv[1:], ""][:5]
    stuck = threading.Semaphore(0) if mode == "orphans" else None
    pipeline = build_pipeline(log_dir, stuck)
    print("ready", flush=True)
    store = SqliteStore(db_path)
    try:
        with Registry(clock=OffsetClock(float(offset)), lease_ttl=30.0) as registry:
            factory = PipelineFactory(pipeline, store=store, registry=registry)
            if mode == "orphans":
                for n in range(int(arg)):
                    factory.prepare(run_id=f"orphan-{n}").start()
                for _ in range(int(arg)):
                    stuck.acquire()
                print("blocked", flush=True)
                threading.Event().wait()
            if mode == "run":
                try:
                    store.load_run(arg)
                except RunNotFound:
                    results = [factory.prepare(run_id=arg).run(timeout=60)]
                else:
                    results = [context.wait(60) for context in registry.recover(factory)]
                if [r.status for r in results if r.run_id == arg] != ["succeeded"]:
                    print(f"run {arg}: {results!r}", file=sys.stderr)
                    return 1
            if mode == "recover":
                sys.stdin.readline()  # "go": the test starts the racers together
                contexts = registry.recover(factory)
                for context in contexts:
                    print(f"took {context.run_id}", flush=True)
                results = [context.wait(60) for context in contexts]
                if any(r.status != "succeeded" for r in results):
                    print(f"{results!r}", file=sys.stderr)
                    return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
