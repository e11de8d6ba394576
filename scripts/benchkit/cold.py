"""Cold resumes: a fresh Python process imports one library and resumes a paused run.

Each side's child runs the same definitions as the in-process cases, written out the way
a user's script would, so that the child imports only the library it measures. argv[1]
is the database, argv[2] the run or thread id. A wrong final state exits with status 3.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from stageline import PipelineFactory
from stageline.stores import SqliteStore

from .ours import sl_pause_pipeline, sl_pause_runs
from .peers import SqliteSaver, lg_gate_builder, lg_pause_threads
from .settings import Settings
from .timing import check, per, scratch_dir

SL_COLD_RESUME = """
import sys
from stageline import Pause, Pipeline, PipelineFactory, Stage, Step
from stageline.stores import SqliteStore

def inc(state, ctx):
    return {"n": state["n"] + 1}

pipeline = Pipeline("pause3", [
    Stage("s1", order=1, steps=[Step("inc", inc)], router=lambda s, r: Pause("s3", timeout=300)),
    Stage("s2", order=2, steps=[Step("inc", inc)]),
    Stage("s3", order=3, steps=[Step("inc", inc)]),
])
store = SqliteStore(sys.argv[1])
result = PipelineFactory(pipeline, store=store).resume(sys.argv[2], patch={"approved": True}).run()
store.close()
sys.exit(0 if result.status == "succeeded" and result.state == {"n": 2, "approved": True} else 3)
"""
LG_COLD_RESUME = """
import sqlite3, sys
from typing import TypedDict
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

class GateState(TypedDict, total=False):
    n: int
    approved: bool

def inc(state):
    return {"n": state["n"] + 1}

def gate(state):
    return {"approved": interrupt("approve?")}

graph = StateGraph(GateState)
graph.add_node("s1", inc)
graph.add_node("gate", gate)
graph.add_node("s3", inc)
graph.add_edge(START, "s1")
graph.add_edge("s1", "gate")
graph.add_edge("gate", "s3")
graph.add_edge("s3", END)
conn = sqlite3.connect(sys.argv[1], check_same_thread=False)
app = graph.compile(checkpointer=SqliteSaver(conn))
config = {"configurable": {"thread_id": sys.argv[2]}}
output = app.invoke(Command(resume=True), config, durability="sync")
conn.close()
sys.exit(0 if output == {"n": 2, "approved": True} else 3)
"""


def _cold_resume(code: str, db: Path, run_id: str, cwd: Path) -> float:
    """Wall time of a fresh interpreter resuming one run, in microseconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(db), run_id], cwd=cwd, capture_output=True, text=True
    )
    elapsed = per(start, 1)
    check(proc.returncode == 0, f"cold resume exited {proc.returncode}: {proc.stderr.strip()}")
    return elapsed


def sl_cold_resume(s: Settings) -> float:
    with scratch_dir(s) as tmp:
        db = tmp / "stageline.db"
        store = SqliteStore(db)
        try:
            factory = PipelineFactory(sl_pause_pipeline(), store=store, initial_state={"n": 0})
            (run_id,) = sl_pause_runs(factory, 1)
        finally:
            store.close()
        return _cold_resume(SL_COLD_RESUME, db, run_id, tmp)


def lg_cold_resume(s: Settings) -> float:
    with scratch_dir(s) as tmp:
        db = tmp / "langgraph.db"
        conn = sqlite3.connect(db, check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            app = lg_gate_builder().compile(checkpointer=saver)
            (config,) = lg_pause_threads(app, 1)
        finally:
            conn.close()
        return _cold_resume(LG_COLD_RESUME, db, config["configurable"]["thread_id"], tmp)
