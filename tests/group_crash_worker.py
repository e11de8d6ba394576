"""Subprocess for tests/test_group_commit_crash.py: many runs at once, so commits group.

    python tests/group_crash_worker.py run STORE LOG RUNS
    python tests/group_crash_worker.py recover STORE LOG RUNS

STORE is a SQLite path or a store URL (postgresql://...?schema=...). The pipeline has
STAGES stages of one step; the step of stage k appends "RUN_ID s{k}" to LOG (O_APPEND,
then fsync) before it returns {"s{k}": True, "count": k}, then prints "step" to stdout.

`run`: start RUNS runs ("g0".."g{RUNS-1}") at once under a Registry and wait for them;
each stage success (published after its commit returned, so once it is durable) prints
"committed RUN_ID STAGE LARGEST" (LARGEST: the most commits the store has written in one
transaction so far). `recover`: an hour ahead on the wall clock (the killed
worker's leases have run out), `registry.recover` every run and wait for them all.

Prints "ready" once imported; exits 0 when every run it drove succeeded.
"""

from __future__ import annotations

import os
import sys
import threading

from stageline import Pipeline, PipelineFactory, Registry, Stage, Step, SystemClock
from stageline.stores import SqliteStore
from stageline.stores.url import open_store

STAGES = 10
OUT = threading.Lock()


class AheadClock(SystemClock):
    def wall(self) -> float:
        return super().wall() + 3600.0


def say(line: str) -> None:
    with OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def told(store, event) -> None:
    """A stage's commit is durable: say so, with the largest group written so far."""
    say(f"committed {event.run_id} {event.stage_id} {store.group_stats()['largest']}")


def make_step(log: str, stage: int):
    def action(state, ctx):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{ctx.run_id} s{stage}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        say("step")
        return {f"s{stage}": True, "count": stage}

    return action


def build_pipeline(log: str) -> Pipeline:
    stages = [Stage(f"s{k}", k, steps=[Step("w", make_step(log, k))]) for k in range(1, 11)]
    return Pipeline("group", stages)


def main(argv: list[str]) -> int:
    mode, where, log, runs = argv[1], argv[2], argv[3], int(argv[4])
    pipeline = build_pipeline(log)
    print("ready", flush=True)
    store = open_store(where) if "://" in where else SqliteStore(where)
    clock = AheadClock() if mode == "recover" else SystemClock()
    try:
        with Registry(clock=clock, lease_ttl=30.0) as registry:
            factory = PipelineFactory(pipeline, store=store, registry=registry)
            if mode == "run":
                contexts = []
                for n in range(runs):
                    context = factory.prepare(run_id=f"g{n}")
                    context.on("stage:success", lambda e: told(store, e))
                    contexts.append(context)
                waits = [context.start() for context in contexts]
                results = [wait.result(120) for wait in waits]
            else:
                results = [context.wait(120) for context in registry.recover(factory)]
    finally:
        store.close()
    failed = [r for r in results if r.status != "succeeded"]
    if failed:
        print(f"{failed!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
