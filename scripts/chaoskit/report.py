"""The summary: what was done, what became of it, and the violations (which must be 0)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .actions import Chaos
from .settle import Settled
from .verdict import Verdict, log_lines

RUN_STATUSES = ("succeeded", "failed", "aborted", "paused", "quarantined", "corrupt")


def summary(chaos: Chaos, verdict: Verdict, settled: Settled, facts: dict[str, Any]) -> list[str]:
    """The summary's lines."""
    counts, fleet = chaos.ledger.counts, chaos.fleet.counts
    runs = ", ".join(f"{s} {verdict.statuses[s]}" for s in RUN_STATUSES)
    others = sorted(set(verdict.statuses) - set(RUN_STATUSES))
    runs += "".join(f", {s} {verdict.statuses[s]}" for s in others)
    posted = sum(v for k, v in counts.items() if k.startswith("posted_"))
    return [
        f"chaos: {facts['store']}, seed {facts['seed']}, plan {facts['plan']} "
        f"({facts['actions']} actions), {facts['daemons']} daemons",
        f"duration: {facts['chaos_seconds']:.1f}s of chaos + {settled.seconds:.1f}s settling",
        f"daemons: started {fleet['started']}, killed {fleet['killed']} (kill -9), "
        f"crashed {fleet['crashed']} (by the crash-looping run), stopped {fleet['stopped']}",
        f"backends terminated: {counts['backends_terminated']}",
        f"runs: started {sum(verdict.statuses.values())}, {runs} "
        f"(damaged {len(chaos.ledger.damaged)})",
        f"requests: posted {posted} (poison {counts['posted_poison']}, unknown runs or "
        f"pipelines {counts['posted_unknown']}, aborts {counts['posted_abort']}, by "
        f"`stageline abort` {counts['posted_cli']} of {counts['cli_aborts']}), answered done {verdict.answers['done']}, "
        f"failed {verdict.answers['failed']}, claimed by killed daemons "
        f"{verdict.answers['claimed_by_dead']}",
        f"stage executions: {verdict.figures['executions']}, of which "
        f"{verdict.figures['uncommitted_executions']} did not commit (failed, aborted, or in "
        "flight at a kill)",
        f"invariant violations: {len(verdict.violations)}",
    ]


def details(chaos: Chaos, verdict: Verdict) -> list[str]:
    """Each violation, the driver's own errors, and the log lines of the runs named."""
    lines = [f"VIOLATION: {v}" for v in verdict.violations]
    lines += [f"driver error: {e}" for e in chaos.ledger.errors]
    failures = recover_failures(chaos.fleet.folder) if verdict.violations else Counter()
    for (pipeline_id, error), count in sorted(failures.items()):
        lines.append(f"note: daemon:recover_failed logged {count} times for pipeline "
                     f"{pipeline_id!r}: {error}")  # fmt: skip
    for run_id in sorted(verdict.suspects)[:10]:
        lines.append(f"log of {run_id}:")
        lines += [f"  {line}" for line in log_lines(chaos.fleet.folder, run_id)]
    return lines


def recover_failures(folder: Path) -> Counter[tuple[str, str]]:
    """How often the daemons logged `daemon:recover_failed`, by pipeline and error: a
    recovery pass that failed for a whole pipeline leaves its orphans where they are."""
    found: Counter[tuple[str, str]] = Counter()
    for log in folder.glob("d*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"daemon:recover_failed"' in line:
                event = json.loads(line)
                found[(str(event.get("pipeline_id")), str(event.get("error"))[:160])] += 1
    return found
