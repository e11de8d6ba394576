"""The performance issue's goals, computed from the rows of one run: each is a ratio of
two figures of the same run (lower is better, except the share of in-memory throughput
kept, where higher is), printed as met or MISSED. A goal whose rows did not run is left
out. A miss does not fail the bench."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import Row

POOLED = "stageline prepare().run() on 50 threads, as the peers run"
"""The label of the throughput cases' information row run in the peers' shape."""


@dataclass(frozen=True)
class Goal:
    what: str
    value: Callable[[Callable[[str], Row | None]], float | None]
    limit: float
    at_least: bool = False  # the value must be >= limit (else <=)

    def line(self, find: Callable[[str], Row | None]) -> str | None:
        value = self.value(find)
        if value is None:
            return None
        met = value >= self.limit if self.at_least else value <= self.limit
        sign = ">=" if self.at_least else "<="
        return f"  {self.what} {sign} {self.limit:g}: {'met' if met else 'MISSED'} ({value:.2f})"


def _kept(durable: str, memory: str) -> Callable[[Callable[[str], Row | None]], float | None]:
    """In-memory time per run over durable time per run: the share of in-memory
    throughput a durable store keeps (the same harness on both sides)."""

    def value(find: Callable[[str], Row | None]) -> float | None:
        slow, fast = find(durable), find(memory)
        return None if slow is None or fast is None else fast.stageline / slow.stageline

    return value


def _field(case: str, of: str) -> Callable[[Callable[[str], Row | None]], float | None]:
    def value(find: Callable[[str], Row | None]) -> float | None:
        row = find(case)
        if row is None:
            return None
        if of == "floor":
            return None if row.floor is None else row.stageline / row.floor
        return row.ratio_dbos if of == "dbos" else row.ratio

    return value


def _pooled(case: str) -> str:
    return f"{case} ({POOLED})"


GOALS: tuple[Goal, ...] = (
    Goal("durable SQLite throughput / in-memory", _kept(
        "throughput_durable_sqlite", "throughput_1000_runs"), 0.7, at_least=True),
    Goal("the same, both run as the peers run", _kept(
        _pooled("throughput_durable_sqlite"), _pooled("throughput_1000_runs")), 0.7,
        at_least=True),
    Goal("durable PostgreSQL throughput / in-memory", _kept(
        "throughput_durable_postgres", "throughput_1000_runs"), 0.5, at_least=True),
    Goal("the same, both run as the peers run", _kept(
        _pooled("throughput_durable_postgres"), _pooled("throughput_1000_runs")), 0.5,
        at_least=True),
    Goal("throughput_durable_sqlite / DBOS", _field("throughput_durable_sqlite", "dbos"), 0.07),
    Goal("throughput_durable_postgres / DBOS", _field("throughput_durable_postgres", "dbos"),
         0.07),
    Goal("throughput_durable_sqlite / SqliteSaver", _field("throughput_durable_sqlite", "lg"),
         0.2),
    Goal("a lone durable SQLite stage / its floor", _field(
        "durable_sqlite_stage_commit", "floor"), 1.5),
    Goal("a lone durable PostgreSQL stage / its floor", _field("durable_step_postgres", "floor"),
         1.5),
    Goal("pause_resume_same_process / LangGraph", _field("pause_resume_same_process", "lg"), 0.1),
)  # fmt: skip


def goal_lines(rows: Sequence[Row]) -> list[str]:
    """The goals whose rows ran, each met or MISSED (a heading first), or nothing."""
    by_case = {row.case: row for row in rows}
    lines = [line for line in (goal.line(by_case.get) for goal in GOALS) if line is not None]
    if not lines:
        return []
    return ["the performance issue's goals (ratios of this run's figures):", *lines]


__all__ = ["GOALS", "POOLED", "Goal", "goal_lines"]
