"""The cases: what each one measures on each side, its information rows and its target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import dbos_peer, durable_cases, otel, ours, peers
from .cold import lg_cold_resume, sl_cold_resume
from .dbos_peer import measure as dbos
from .floor import (
    pg_commit_floor,
    pg_throughput_floor,
    sqlite_commit_floor,
    sqlite_throughput_floor,
)
from .goals import POOLED
from .pg import pg_unavailable
from .probe import sl_paused_memory, sl_paused_threads
from .report import format_value
from .settings import Settings
from .timing import Measure


@dataclass(frozen=True)
class Target:
    """A goal printed under the table, met or missed; a miss does not fail the bench."""

    of: str  # "ratio" (stageline / LangGraph) or "stageline" (its own figure)
    limit: float
    strict: bool = False  # `<` rather than `<=`

    def describe(self, unit: str) -> str:
        return f"{self.of} {'<' if self.strict else '<='} {self.show(self.limit, unit)}"

    def show(self, value: float, unit: str) -> str:
        if self.of == "ratio":
            return f"{value:.2f}"
        return format_value(value, unit) + (" µs" if unit == "us" else "")

    def met(self, value: float) -> bool:
        return value < self.limit if self.strict else value <= self.limit


@dataclass(frozen=True)
class Variant:
    """An information row under a case: another LangGraph (and maybe stageline) setup."""

    label: str
    langgraph: Measure | None  # None: no LangGraph figure (an information row)
    stageline: Measure | None = None  # None: reuse the case's stageline median
    unit: str | None = None  # None: the case's unit
    target: Target | None = None
    dbos: Measure | None = None


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    stageline: Measure
    langgraph: Measure | None  # None: stageline only (an information row)
    unit: str = "us"  # "us", "bytes" or "threads"
    variants: tuple[Variant, ...] = ()
    reps: Callable[[Settings], int] | None = None  # None: settings.reps (1 for bytes)
    warmup: bool = True  # one untimed sample of each side first
    target: Target | None = None
    unavailable: Callable[[], str | None] | None = None  # why it cannot run here, or None
    dbos: Measure | None = None  # None: DBOS has no equivalent, or is not installed
    floor: Measure | None = None  # bare commits of the same rows, no runtime


CASES: tuple[Case, ...] = (
    Case(
        "linear_100_stages_per_stage",
        "100 one-step stages, in memory; time per stage",
        ours.sl_linear,
        peers.lg_linear,
        variants=(
            Variant("langgraph default durability=async", peers.lg_linear_default),
            Variant("langgraph no checkpointer", peers.lg_linear_no_checkpointer),
            *otel.variants(Variant),
        ),
        target=Target("ratio", 0.25),
    ),
    Case(
        "fanout_4_steps_stage",
        "one stage of 4 concurrent steps and the join, in memory; time per run",
        ours.sl_fanout,
        peers.lg_fanout,
        target=Target("ratio", 0.3),
    ),
    Case(
        "children_4_pipelines_stage",
        "one stage of 4 child pipelines of one step each, in memory; time per run",
        ours.sl_children,
        peers.lg_children,
    ),
    Case(
        "durable_sqlite_stage_commit",
        "20 one-step stages on SQLite, each committed before the next; time per stage",
        ours.sl_durable,
        peers.lg_durable,
        variants=(Variant("langgraph default durability=async", peers.lg_durable_default),),
        target=Target("ratio", 0.25),
        dbos=dbos(dbos_peer.db_durable),
        floor=sqlite_commit_floor,
    ),
    Case(
        "durable_step_postgres",
        "the 20 stages above on PostgreSQL, synchronous_commit=on; time per stage",
        ours.sl_durable_pg,
        durable_cases.lg_durable_pg,
        unavailable=pg_unavailable,
        dbos=dbos(dbos_peer.db_durable_pg),
        floor=pg_commit_floor,
    ),
    Case(
        "checkpoint_bytes_per_stage",
        "bytes of rows written per stage of a small state on SQLite (unit: bytes)",
        ours.sl_bytes,
        peers.lg_bytes,
        unit="bytes",
        variants=(Variant("sqlite WAL bytes", peers.lg_wal_bytes, ours.sl_wal_bytes),),
        target=Target("ratio", 0.1),
    ),
    Case(
        "throughput_1000_runs",
        "1,000 runs (200 with --quick) of 10 stages, 50 at a time, in memory; time per run",
        ours.sl_throughput,
        peers.lg_throughput,
        variants=(Variant(POOLED, None, ours.sl_throughput_pooled),),
        target=Target("ratio", 0.25),
    ),
    Case(
        "throughput_durable_sqlite",
        "1,000 runs (200 with --quick) of 10 stages, 50 at a time, on SQLite "
        "(synchronous=FULL); time per run",
        durable_cases.sl_throughput_sqlite,
        durable_cases.lg_throughput_sqlite,
        variants=(Variant(POOLED, None, durable_cases.sl_pooled_sqlite),),
        reps=lambda s: 1,  # one sample of 1,000 runs (10 untimed first), alternated
        warmup=False,
        dbos=dbos(dbos_peer.db_throughput_sqlite),
        floor=sqlite_throughput_floor,
    ),
    Case(
        "throughput_durable_postgres",
        "the runs above on PostgreSQL (synchronous_commit=on); time per run",
        durable_cases.sl_throughput_pg,
        durable_cases.lg_throughput_pg,
        variants=(Variant(POOLED, None, durable_cases.sl_pooled_pg),),
        reps=lambda s: 1,  # one sample of 1,000 runs (10 untimed first), alternated
        warmup=False,
        unavailable=pg_unavailable,
        dbos=dbos(dbos_peer.db_throughput_pg),
        floor=pg_throughput_floor,
    ),
    Case(
        "pause_resume_same_process",
        "resume a paused run in memory (registry fast path) to its next stage and the end; "
        "time per resume",
        ours.sl_pause_resume,
        peers.lg_pause_resume,
        variants=(Variant("langgraph default durability=async", peers.lg_pause_resume_default),),
        target=Target("ratio", 0.2),
    ),
    Case(
        "wait_for_message",
        "a run waits for a message on SQLite; another thread sends it: latency from the send "
        "to the next stage started (median of 20 messages, 10 with --quick)",
        durable_cases.sl_wait_message,
        durable_cases.lg_wait_message,
        dbos=dbos(dbos_peer.db_wait_message),
    ),
    Case(
        "slow_path_resume_sqlite",
        "resume a paused run from SQLite with a new factory (or a newly compiled graph) to "
        "its next stage and the end; time per resume",
        ours.sl_slow_resume,
        peers.lg_slow_resume,
        variants=(Variant("langgraph graph compiled once", peers.lg_slow_resume_compiled_once),),
        target=Target("stageline", 2000.0, strict=True),
    ),
    Case(
        "cold_resume_fresh_process",
        "a new Python process imports the library and resumes a paused run from SQLite; "
        "wall time per process",
        sl_cold_resume,
        lg_cold_resume,
        reps=lambda s: s.cold_reps,
        target=Target("ratio", 0.3),
    ),
    Case(
        "live_paused_runs_memory",
        "10,000 (2,000 with --quick) paused runs held live by one Registry, in a child "
        "process: RSS growth per run (unit: bytes), and extra threads",
        sl_paused_memory,
        None,
        unit="bytes",
        variants=(
            Variant(
                "extra threads",
                None,
                sl_paused_threads,
                unit="threads",
                target=Target("stageline", 0.0),
            ),
        ),
        reps=lambda s: 1,
        warmup=False,
        target=Target("stageline", 10 * 1024.0, strict=True),
    ),
)
