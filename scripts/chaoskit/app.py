"""The APP the daemons serve, and the step log its steps append to.

Every step appends one line `time run stage token pid` to `steps.log` before it returns
`{stage: token}` (a fresh token per execution), so the journal's commit of a stage names
the execution that committed and any other execution of that stage shows in the log.
Pipelines: `short` (one stage), `approval` (pauses for a person unless `by` is set),
`flaky` (its second stage fails `fails` times, counted per run), `slow` (a stage that
takes `slow` seconds, so kills land mid-stage; it stops early when aborted) and
`crashy` (its second stage kills its own daemon with SIGKILL: a crash loop that
recovery must end by quarantining the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODULE = "chaosapp"
APP = f"{MODULE}:app"
STEP_LOG = "steps.log"
PIPELINES = ("short", "approval", "flaky", "slow", "crashy")

SOURCE = """
import os
import signal
import time
import uuid
from pathlib import Path

from stageline import Pause, Pipeline, Stage, Step

HERE = Path(__file__).parent


def note(ctx):
    token = uuid.uuid4().hex[:12]
    with open(HERE / "steps.log", "a") as log:  # one short append: atomic
        log.write(f"{time.time():.6f} {ctx.run_id} {ctx.stage_id} {token} {os.getpid()}\\n")
    return {ctx.stage_id: token}


def step(state, ctx):
    return note(ctx)


def slow(state, ctx):
    done = note(ctx)
    ctx.aborted.wait(float(state.get("slow", 1.0)))
    return done


def flaky(state, ctx):
    done = note(ctx)
    with open(HERE / "attempts" / ctx.run_id, "a+") as tries:
        tries.write("x")
        tries.seek(0)
        if len(tries.read()) <= int(state.get("fails", 0)):
            raise RuntimeError("transient outage")
    return done


def crash(state, ctx):
    note(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


def approve(state, results):
    return None if state.get("by") else Pause("ship", timeout=2.0)


def two(pipeline_id, second):
    return Pipeline(pipeline_id, [
        Stage("one", order=1, steps=[Step("one", step)]),
        Stage("two", order=2, steps=[Step("two", second)]),
    ])


short = Pipeline("short", [Stage("only", order=1, steps=[Step("only", step)])])
approval = Pipeline("approval", [
    Stage("ask", order=1, steps=[Step("ask", step)], router=approve),
    Stage("ship", order=2, steps=[Step("ship", step)]),
])
slow_three = Pipeline("slow", [
    Stage("one", order=1, steps=[Step("one", step)]),
    Stage("two", order=2, steps=[Step("two", slow)]),
    Stage("three", order=3, steps=[Step("three", step)]),
])
app = [short, approval, two("flaky", flaky), slow_three, two("crashy", crash)]
"""


def write_app(folder: Path) -> None:
    """The APP module, and the folder its flaky step counts attempts in."""
    (folder / f"{MODULE}.py").write_text(SOURCE)
    (folder / "attempts").mkdir(exist_ok=True)
    (folder / STEP_LOG).touch()


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution of a stage's step, as the step log shows it."""

    at: float
    run_id: str
    stage: str
    token: str
    pid: int


def read_step_log(folder: Path) -> dict[tuple[str, str], list[Execution]]:
    """Every logged execution, by (run, stage), in the order they were logged."""
    found: dict[tuple[str, str], list[Execution]] = {}
    for line in (folder / STEP_LOG).read_text().splitlines():
        at, run_id, stage, token, pid = line.split()
        execution = Execution(float(at), run_id, stage, token, int(pid))
        found.setdefault((run_id, stage), []).append(execution)
    return found
