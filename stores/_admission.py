"""Admission bookkeeping shared by the stores: who holds and who waits for each limit.

A store keeps, per run, the `Claim`s it was admitted (or queued) with, and whether it
holds them. A claim's slot is held while the run is "running" with a lease not run out;
a run that pauses, sleeps, ends or loses its lease frees it without any write, so slots
cannot leak. `MemoryStore` keeps these in dicts and decides here; the SQL stores run the
same rules as statements (stores/_sqlite_admission.py, stores/_pg_admission.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stageline.core import lifecycle
from stageline.core.admission import Claim
from stageline.core.store import RunRecord


@dataclass
class Ledger:
    """A MemoryStore's admissions: each run's claims, who holds them, recent starts."""

    claims: dict[str, tuple[Claim, ...]] = field(default_factory=dict)
    holding: set[str] = field(default_factory=set)
    by_slot: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """(limit, key) -> the runs with a claim on it (an index over `claims`)."""
    starts: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    lines: dict[tuple[str, str], list[tuple[int, float, str]]] = field(default_factory=dict)
    """(limit, key) -> a heap of (-priority, created_at, run_id) of the runs that waited
    for it; entries of runs no longer waiting are dropped when they reach the top."""

    def admits(
        self, runs: Mapping[str, RunRecord], run: RunRecord, claims: Sequence[Claim], now: float
    ) -> bool:
        return all(self._admits(runs, run, claim, now) for claim in claims)

    def _admits(
        self, runs: Mapping[str, RunRecord], run: RunRecord, claim: Claim, now: float
    ) -> bool:
        slot = (claim.limit, claim.key)
        holders = (runs.get(r) for r in self.by_slot.get(slot, set()) & self.holding)
        held = sum(1 for r in holders if r is not None and r.run_id != run.run_id and holds(r, now))
        if held >= claim.max_running:
            return False
        first = self._first_waiting(runs, slot)
        if first is not None and first.run_id != run.run_id and ahead(first, run):
            return False
        if claim.rate is not None:
            n, seconds = claim.rate
            if sum(1 for at in self.starts.get(slot, ()) if at > now - seconds) >= n:
                return False
        return True

    def _first_waiting(
        self, runs: Mapping[str, RunRecord], slot: tuple[str, str]
    ) -> RunRecord | None:
        """The run first in line for `slot` (None: nobody waits)."""
        line = self.lines.get(slot, [])
        while line:
            run_id = line[0][2]
            run = runs.get(run_id)
            claims = {(c.limit, c.key) for c in self.claims.get(run_id, ())}
            waiting = run is not None and run.status == lifecycle.QUEUED
            if waiting and run is not None and run_id not in self.holding and slot in claims:
                return run
            heapq.heappop(line)
        return None

    def _claim(self, run_id: str, claims: Sequence[Claim]) -> None:
        self.forget(run_id)
        self.claims[run_id] = tuple(claims)
        for claim in claims:
            self.by_slot.setdefault((claim.limit, claim.key), set()).add(run_id)

    def admitted(self, run_id: str, claims: Sequence[Claim], now: float) -> None:
        self._claim(run_id, claims)
        self.holding.add(run_id)
        for claim in claims:
            if claim.rate is not None:
                slot, seconds = (claim.limit, claim.key), claim.rate[1]
                recent = [at for at in self.starts.get(slot, ()) if at > now - seconds]
                self.starts[slot] = [*recent, now]

    def queued(self, run: RunRecord, claims: Sequence[Claim]) -> None:
        self._claim(run.run_id, claims)
        self.holding.discard(run.run_id)
        for claim in claims:
            line = self.lines.setdefault((claim.limit, claim.key), [])
            heapq.heappush(line, (-run.priority, run.created_at, run.run_id))

    def forget(self, run_id: str) -> None:
        for claim in self.claims.pop(run_id, ()):
            self.by_slot.get((claim.limit, claim.key), set()).discard(run_id)
        self.holding.discard(run_id)

    def usage(self, runs: Mapping[str, RunRecord], now: float) -> list[dict[str, Any]]:
        counts: dict[tuple[str, str], dict[str, Any]] = {}
        for run_id, claims in self.claims.items():
            run = runs.get(run_id)
            if run is None:
                continue
            for claim in claims:
                row = counts.setdefault(
                    (claim.limit, claim.key),
                    {"limit": claim.limit, "key": claim.key, "running": 0, "queued": 0},
                )
                if run_id in self.holding and holds(run, now):
                    row["running"] += 1
                elif run.status == lifecycle.QUEUED:
                    row["queued"] += 1
        return [
            counts[slot]
            for slot in sorted(counts)
            if counts[slot]["running"] + counts[slot]["queued"]
        ]


def holds(run: RunRecord, now: float) -> bool:
    """Whether an admitted run still holds its slots at `now`: it is running, and its
    lease (if it has one: a run driven without a registry has none) has not run out."""
    if run.status != lifecycle.RUNNING:
        return False
    return run.lease_until is None or run.lease_until > now


def ahead(other: RunRecord, run: RunRecord) -> bool:
    """Whether queued `other` goes before `run`: higher priority, else older, else the
    smaller run id (a total order every store computes alike)."""
    return (-other.priority, other.created_at, other.run_id) < (
        -run.priority, run.created_at, run.run_id,
    )  # fmt: skip
