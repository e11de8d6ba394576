"""The OpenTelemetry rows of `linear_100_stages_per_stage`, each measured in a child process.

A global tracer provider can be set once per process, and the bench process must keep
none (its other rows are today's figures), so each sample is a fresh interpreter that
sets up one of three worlds, warms up with one run, then times the same work as
`ours.sl_linear` and prints its time per stage:

    absent   opentelemetry cannot be imported (as if not installed)
    api      the API imported, no provider configured (the library's check runs, finds none)
    sdk      the SDK's TracerProvider (SimpleSpanProcessor into an InMemorySpanExporter)
             and MeterProvider (InMemoryMetricReader): every span and metric is made

    python -m benchkit.otel WORLD RUNS        # from scripts/: prints one number (µs per stage)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from .settings import LINEAR_STAGES, Settings
from .timing import BenchError, Measure

WORLDS = ("absent", "api", "sdk")
_SCRIPTS = Path(__file__).resolve().parent.parent


def sdk_missing() -> str | None:
    """Why the OTel rows cannot run here, or None."""
    try:
        found = importlib.util.find_spec("opentelemetry.sdk") is not None
    except ImportError:
        found = False
    return None if found else "needs opentelemetry-sdk (pip install -e '.[dev]')"


def _measure(world: str) -> Measure:
    def measure(s: Settings) -> float:
        proc = subprocess.run(
            [sys.executable, "-m", "benchkit.otel", world, str(s.linear_runs)],
            cwd=_SCRIPTS,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise BenchError(f"otel {world} child failed: {proc.stderr.strip()[-400:]}")
        return float(proc.stdout.strip().splitlines()[-1])

    return measure


def variants(variant: Any) -> tuple[Any, ...]:
    """The information rows under `linear_100_stages_per_stage`, made with the `Variant`
    class given (none without the SDK)."""
    if sdk_missing() is not None:
        return ()
    return (
        variant("otel absent, child process", None, _measure("absent")),
        variant("otel API, no provider, child process", None, _measure("api")),
        variant("otel SDK provider, in-memory exporter, child process", None, _measure("sdk")),
    )


def _setup(world: str) -> object:
    if world == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
        return None
    from opentelemetry import metrics, trace

    if world == "api":
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return exporter


def child(world: str, runs: int) -> float:
    """Time per stage of `runs` runs of the 100-stage pipeline in `world`."""
    exporter = _setup(world)
    from stageline import PipelineFactory

    from .ours import sl_linear_pipeline, sl_run_ok
    from .timing import per

    factory = PipelineFactory(sl_linear_pipeline(LINEAR_STAGES), initial_state={"n": 0})
    sl_run_ok(factory.prepare().run(), LINEAR_STAGES)  # warm-up
    import gc
    import time

    gc.collect()
    start = time.perf_counter()
    for _ in range(runs):
        sl_run_ok(factory.prepare().run(), LINEAR_STAGES)
    value = per(start, runs * LINEAR_STAGES)
    if exporter is not None:  # every stage and step made its span: 1 + 2 * 100 a run
        spans = len(exporter.get_finished_spans())  # type: ignore[attr-defined]
        if spans != (runs + 1) * (1 + 2 * LINEAR_STAGES):
            raise SystemExit(f"expected spans, found {spans}")
    return value


if __name__ == "__main__":
    print(child(sys.argv[1], int(sys.argv[2])))
