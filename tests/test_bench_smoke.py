"""Smoke test of scripts/bench.py: it runs, and writes sane records. Timings are not judged."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

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
        assert set(record) == {
            "case", "stageline_us", "langgraph_us", "dbos_us", "floor_us", "ratio", "ratio_dbos"
        }  # fmt: skip
        assert record["dbos_us"] is None and record["ratio_dbos"] is None  # in memory: none
        assert record["floor_us"] is None
        information = "(otel " in record["case"]  # stageline only, in child processes
        for key in ("stageline_us", "langgraph_us", "ratio"):
            if information and key != "stageline_us":
                assert record[key] is None, record
                continue
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


def quick_records(tmp_path: Path, cases: Sequence[str]) -> tuple[dict[str, dict[str, Any]], str]:
    """`bench.py --quick --reps 1` of `cases`: its JSON records by case, and its output."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", "--reps", "1", "--cases", ",".join(cases),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=220,
    )  # fmt: skip
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    return {r["case"]: r for r in json.loads(out.read_text())}, proc.stdout


@pytest.mark.slow  # about 15 s: a child process pauses 2,000 runs, and 4 fresh interpreters
def test_pause_cases_and_the_stageline_only_rows(tmp_path: Path) -> None:
    by_case, stdout = quick_records(tmp_path, PAUSE_CASES)
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
    assert "targets" in stdout and "pause_resume_same_process: ratio <=" in stdout


def load_bench() -> ModuleType:
    """scripts/bench.py imported as a module, to call its sweep functions directly."""
    spec = importlib.util.spec_from_file_location("bench_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def test_sweeps_measure_both_libraries_at_a_small_size() -> None:
    bench = load_bench()
    points = []
    for sweep in bench.SWEEPS:
        points += bench.run_sweep(sweep, (10,), bench.QUICK, reps=1)
    assert [(p.sweep, p.size) for p in points] == [(s.name, 10) for s in bench.SWEEPS]
    for point in points:
        assert point.stageline > 0 and point.langgraph > 0 and point.samples == 1, point
    table = bench.format_sweeps(points)
    assert all(s.name in table for s in bench.SWEEPS) and "µs/stage" in table
    assert bench.sweep_sizes(quick=True) == (10, 100, 1_000)
    assert bench.sweep_sizes(quick=False) == (10, 100, 1_000, 10_000)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    import matplotlib  # noqa: F401  (in the bench extra: a missing one fails, not skips)

    bench = load_bench()
    points = [
        bench.SweepPoint(sweep.name, size, 100.0 + size / 100, 500.0 + size / 10, 1)
        for sweep in bench.SWEEPS
        for size in (10, 100, 1_000)
    ]
    out = tmp_path / "sweeps.png"
    bench.plot_sweeps(bench.load_pyplot(), points, out, bench.sweep_title(True, 3))
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_durable_plot_writes_a_png(tmp_path: Path) -> None:
    bench = load_bench()
    points = [
        bench.DurablePoint(library, n, max(100, 2 * n), 100.0 * k + n / 10)
        for k, library in enumerate(("stageline", "LangGraph", "DBOS"), start=1)
        for n in (1, 10, 50)
    ]
    table = bench.format_durable_sweep(points)
    assert "DBOS runs/s" in table and "stageline runs/s" in table
    out = tmp_path / "durable.png"
    bench.plot_durable_sweep(bench.load_pyplot(), points, out, bench.durable_title(True))
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


DURABLE_CASES = ("durable_sqlite_stage_commit", "throughput_durable_sqlite", "wait_for_message")


@pytest.mark.slow  # about 20 s: three libraries on SQLite
def test_durable_cases_have_three_libraries_and_a_floor(tmp_path: Path) -> None:
    pytest.importorskip("dbos", reason="the DBOS column needs the bench extra")
    by_case, stdout = quick_records(tmp_path, DURABLE_CASES)
    for name in DURABLE_CASES:
        record = by_case[name]
        for key in ("stageline_us", "langgraph_us", "dbos_us", "ratio", "ratio_dbos"):
            assert record[key] > 0, record
    for name in DURABLE_CASES[:2]:  # the floor: bare commits of the same rows
        assert by_case[name]["floor_us"] > 0, by_case[name]
    assert "runs/s: stageline" in stdout


def test_plot_without_matplotlib_exits_2_before_any_work(tmp_path: Path) -> None:
    hide = (  # None in sys.modules makes `import matplotlib` raise ImportError
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = [{BENCH!r}, '--quick', '--plot', {str(tmp_path / 'x.png')!r}]; "
        f"runpy.run_path({BENCH!r}, run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", hide], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "pip install matplotlib" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "x.png").exists()


def test_plot_only_needs_plot() -> None:
    proc = subprocess.run(
        [sys.executable, BENCH, "--plot-only"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--plot-only needs --plot" in proc.stderr


def test_time_figures_run_at_a_small_size(tmp_path: Path) -> None:
    """`bench.py --time` (stageline only, no LangGraph needed) at 50 sleeping runs, on
    SQLite (and PostgreSQL when its server answers: skipped with a note otherwise)."""
    out = tmp_path / "time.json"
    args = ["--time", "--runs", "50", "--reps", "2", "--start-reps", "1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, BENCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    figures = json.loads(out.read_text())
    assert {f["store"] for f in figures} >= {"sqlite"}, figures
    for figure in figures:
        assert figure["value"] >= 0 and figure["unit"] in ("ms", "s"), figure
    sqlite = [f["what"] for f in figures if f["store"] == "sqlite"]
    assert any(w.startswith("wake-up latency, median") for w in sqlite), sqlite
    assert any(w.startswith("daemon start to ready, 50 sleeping") for w in sqlite), sqlite
    assert "wake-up latency" in proc.stdout and "< 5 ms" in proc.stdout


def test_admission_figures_run_at_a_small_size(tmp_path: Path) -> None:
    """`bench.py --admission` (stageline only) with 20 queued runs, on MemoryStore and
    SQLite: every figure is there, positive, beside its target where it has one."""
    out = tmp_path / "admission.json"
    args = ["--admission", "--reps", "5", "--queued", "20", "--busy-reps", "2",
            "--stores", "memory,sqlite", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, BENCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    figures = json.loads(out.read_text())
    assert {f["store"] for f in figures} == {"memory", "sqlite"}, figures
    for figure in figures:  # a difference of medians of 5 may be below 0; the rest not
        assert figure["unit"] in ("ms", "x"), figure
        assert figure["value"] > 0 or figure["what"].startswith("added by"), figure
    sqlite = {f["what"]: f for f in figures if f["store"] == "sqlite"}
    assert sqlite["added by admission (difference of the medians)"]["target"] == 0.5
    assert any(w.startswith("ratio: with 20 queued") for w in sqlite), sqlite
    assert "added by admission" in proc.stdout and "< 1.1 x" in proc.stdout
