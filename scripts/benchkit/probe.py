"""The memory probe: paused runs held live by one Registry, measured in a child process.

The child is `bench.py --probe-paused-memory N`, so that neither the other cases'
garbage nor the paused runs' memory distorts anything else; it prints one JSON object.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from stageline import PipelineFactory, Registry

from .ours import sl_pause_pipeline, sl_pause_runs
from .settings import Settings
from .timing import check

BENCH_SCRIPT = Path(__file__).resolve().parent.parent / "bench.py"


PROBE_FLAG = "--probe-paused-memory"
PROBE_WARMUP_RUNS = 50


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def paused_memory_probe(runs: int) -> dict[str, float]:
    """Pause `runs` runs held live by one Registry; RSS and thread growth."""
    with Registry() as registry:
        factory = PipelineFactory(sl_pause_pipeline(), initial_state={"n": 0}, registry=registry)
        sl_pause_runs(factory, PROBE_WARMUP_RUNS)  # pools, timers, caches: started before
        gc.collect()
        rss_before, threads_before = rss_bytes(), threading.active_count()
        sl_pause_runs(factory, runs)
        gc.collect()
        rss_after, threads_after = rss_bytes(), threading.active_count()
        live = registry.stats()["paused_live"]
        check(live == runs + PROBE_WARMUP_RUNS, f"registry holds {live} paused runs")
        return {
            "bytes_per_run": (rss_after - rss_before) / runs,
            "extra_threads": threads_after - threads_before,
            "threads_before": threads_before,
        }


@functools.cache
def probe_paused_memory(s: Settings) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, str(BENCH_SCRIPT), PROBE_FLAG, str(s.paused_live_runs)],
        capture_output=True,
        text=True,
    )
    check(proc.returncode == 0, f"memory probe exited {proc.returncode}: {proc.stderr.strip()}")
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def sl_paused_memory(s: Settings) -> float:
    return probe_paused_memory(s)["bytes_per_run"]


def sl_paused_threads(s: Settings) -> float:
    return probe_paused_memory(s)["extra_threads"]
