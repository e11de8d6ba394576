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
    dbos: float | None = None  # None: no DBOS figure (no equivalent, or not installed)
    floor: float | None = None  # the store's bare-commit floor, for durable cases

    @property
    def ratio(self) -> float | None:
        return None if self.langgraph is None else self.stageline / self.langgraph

    @property
    def ratio_dbos(self) -> float | None:
        return None if self.dbos is None else self.stageline / self.dbos

    def record(self) -> dict[str, Any]:
        def rounded(value: float | None, digits: int = 3) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "case": self.case,
            "stageline_us": round(self.stageline, 3),
            "langgraph_us": rounded(self.langgraph),
            "dbos_us": rounded(self.dbos),
            "floor_us": rounded(self.floor),
            "ratio": rounded(self.ratio, 4),
            "ratio_dbos": rounded(self.ratio_dbos, 4),
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

    main = (slot(case.langgraph), slot(case.dbos), slot(case.floor))
    variant_slots = [(slot(v.stageline), slot(v.langgraph), slot(v.dbos)) for v in case.variants]
    values = medians(measures, settings, reps, case.warmup)

    def value(index: int | None) -> float | None:
        return None if index is None else values[index]

    lg, db, floor = (value(index) for index in main)
    rows = [Row(case.name, values[0], lg, case.unit, case.target, db, floor)]
    for variant, (sl, lg_slot, db_slot) in zip(case.variants, variant_slots, strict=True):
        label = f"{case.name} ({variant.label})"
        stageline = values[0] if sl is None else values[sl]
        unit = variant.unit or case.unit
        rows.append(Row(label, stageline, value(lg_slot), unit, variant.target, value(db_slot)))
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
