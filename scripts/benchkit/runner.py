"""Running a case: its measures sampled alternately, their medians as rows of the table."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from .cases import Case, Target
from .settings import Settings
from .timing import BenchError, Measure, medians


@dataclass(frozen=True)
class Row:
    case: str
    stageline: float
    langgraph: float | None  # None: an information row with no LangGraph figure
    unit: str
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.langgraph is None else self.stageline / self.langgraph

    def record(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "case": self.case,
            "stageline_us": round(self.stageline, 3),
            "langgraph_us": None if self.langgraph is None else round(self.langgraph, 3),
            "ratio": None if ratio is None else round(ratio, 4),
        }

    def target_line(self) -> str | None:
        if self.target is None:
            return None
        value = self.ratio if self.target.of == "ratio" else self.stageline
        if value is None:
            return None
        verdict = "met" if self.target.met(value) else "MISSED"
        shown = self.target.show(value, self.unit)
        return f"  {self.case}: {self.target.describe(self.unit)}: {verdict} ({shown})"


def run_case(case: Case, settings: Settings) -> list[Row]:
    if case.reps is not None:
        reps = case.reps(settings)
    else:  # byte counts do not depend on warm caches or noise: one sample each
        reps = 1 if case.unit == "bytes" else settings.reps
    measures: list[Measure] = [case.stageline]  # index 0

    def slot(measure: Measure | None) -> int | None:
        if measure is None:
            return None
        measures.append(measure)
        return len(measures) - 1

    langgraph = slot(case.langgraph)
    variant_slots = [(slot(v.stageline), slot(v.langgraph)) for v in case.variants]
    values = medians(measures, settings, reps, case.warmup)

    def value(index: int | None) -> float | None:
        return None if index is None else values[index]

    stageline = values[0]
    rows = [Row(case.name, stageline, value(langgraph), case.unit, case.target)]
    for variant, (sl, lg) in zip(case.variants, variant_slots, strict=True):
        rows.append(
            Row(
                f"{case.name} ({variant.label})",
                stageline if sl is None else values[sl],
                value(lg),
                variant.unit or case.unit,
                variant.target,
            )
        )
    return rows


def timed_case(case: Case, settings: Settings) -> list[Row] | None:
    """The case's rows, with its progress on stderr: [] if it cannot run here, None if its
    runs went wrong (the reason is printed)."""
    why_not = case.unavailable() if case.unavailable is not None else None
    if why_not is not None:
        print(f"  {case.name}: skipped: {why_not}", file=sys.stderr, flush=True)
        return []
    print(f"  {case.name}: {case.what} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        rows = run_case(case, settings)
    except BenchError as exc:
        print(f"{case.name}: {exc}", file=sys.stderr)
        return None
    print(f"    done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    return rows
