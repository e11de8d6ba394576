"""How much work the bench does: the settings of a sample and the sizes of the work."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """How much work one sample does, and how many samples make a median."""

    reps: int
    linear_runs: int  # runs of the 100-stage pipeline per sample
    fanout_runs: int  # runs of the 4-step fan-out per sample
    durable_runs: int  # runs of the 20-stage SQLite pipeline per sample
    throughput_runs: int  # runs of the 10-stage pipeline per sample
    resume_runs: int  # paused runs resumed per sample, in memory
    slow_resume_runs: int  # paused runs resumed per sample from SQLite
    cold_reps: int  # fresh processes per side (each is one sample)
    paused_live_runs: int  # paused runs held live for the memory probe
    durable_throughput_runs: int  # runs of the 10-stage pipeline per durable-throughput sample
    wait_runs: int  # messages sent to waiting runs per sample (one at a time)
    concurrency: int = 50
    tmpdir: str | None = None


FULL = Settings(
    reps=5,
    linear_runs=5,
    fanout_runs=200,
    durable_runs=5,
    throughput_runs=1000,
    resume_runs=200,
    slow_resume_runs=30,
    cold_reps=7,
    paused_live_runs=10_000,
    durable_throughput_runs=1000,
    wait_runs=20,
)
QUICK = Settings(
    reps=3,
    linear_runs=3,
    fanout_runs=100,
    durable_runs=3,
    throughput_runs=200,
    resume_runs=100,
    slow_resume_runs=15,
    cold_reps=3,
    paused_live_runs=2_000,
    durable_throughput_runs=200,
    wait_runs=10,
)

LINEAR_STAGES = 100
DURABLE_STAGES = 20
THROUGHPUT_STAGES = 10
FANOUT_KEYS = ("a", "b", "c", "d")
WARM_RUNS = 10  # untimed runs a concurrent sample makes first, on its own store
RECURSION_LIMIT = 10_000  # LangGraph's default (25) is fewer steps than the 100-stage graph
RESUMED_STATE = {"n": 2, "approved": True}  # a paused run's state once resumed, both sides
