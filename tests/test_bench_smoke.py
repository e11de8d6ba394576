"""Smoke test of scripts/bench.py: it runs, and writes sane records. Timings are not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "langgraph", reason="the bench needs the bench extra: pip install -e '.[bench]'"
)
pytest.importorskip("langgraph.checkpoint.sqlite", reason="needs langgraph-checkpoint-sqlite")

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
BENCH = str(ROOT / "scripts" / "bench.py")
CASE = "linear_100_stages_per_stage"


def test_quick_linear_case_writes_positive_records(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", "--cases", CASE, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    assert CASE in proc.stdout

    records = json.loads(out.read_text())
    assert isinstance(records, list)
    by_case = {r["case"]: r for r in records}
    assert CASE in by_case, records
    for record in records:
        assert set(record) == {"case", "stageline_us", "langgraph_us", "ratio"}
        for key in ("stageline_us", "langgraph_us", "ratio"):
            assert isinstance(record[key], int | float) and record[key] > 0, record
    assert all(r["case"].startswith(CASE) for r in records), "only the selected case ran"


def test_unknown_case_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, BENCH, "--cases", "no_such_case"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown case" in proc.stderr and CASE in proc.stderr


PAUSE_CASES = (
    "pause_resume_same_process",
    "slow_path_resume_sqlite",
    "cold_resume_fresh_process",
    "live_paused_runs_memory",
)


@pytest.mark.slow  # about 15 s: a child process pauses 2,000 runs, and 4 fresh interpreters
def test_pause_cases_and_the_stageline_only_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cases = ",".join(PAUSE_CASES)
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", "--reps", "1", "--cases", cases, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    by_case = {r["case"]: r for r in json.loads(out.read_text())}
    assert set(PAUSE_CASES) <= set(by_case), by_case
    for name in PAUSE_CASES[:3]:  # compared with LangGraph
        record = by_case[name]
        assert all(record[k] > 0 for k in ("stageline_us", "langgraph_us", "ratio")), record
    memory = by_case["live_paused_runs_memory"]
    threads = by_case["live_paused_runs_memory (extra threads)"]
    assert memory["stageline_us"] > 0  # bytes per paused run
    assert isinstance(threads["stageline_us"], int | float)  # extra threads (may be 0)
    for record in (memory, threads):  # information rows: no LangGraph figure, no ratio
        assert record["langgraph_us"] is None and record["ratio"] is None, record
    assert "targets" in proc.stdout and "pause_resume_same_process: ratio <=" in proc.stdout
