"""The checks, read from the store, the step log and the daemons' logs, and the figures.

- every run ended (succeeded, failed, aborted, expired), or is resumable (paused), or is
  quarantined, or is one the script damaged and reads as "corrupt"; none lost, none
  unexpected; each (but the corrupt ones) passes tests/invariants.py `check_run`
  (a quarantined run is checked as the running run it was: quarantining adds no event);
- no committed stage ran again: each commit in a journal names (by its token) the
  execution that committed it, and no execution of that stage began after the commit;
- every request was answered: "done" or "failed", and "failed" for each poison request
  and each request for an unknown run or pipeline. A request claimed by a daemon that
  was then killed may stay "claimed" (at most once: docs/daemon.md); it is counted, not
  a violation. Claimed by any other daemon, or still pending, is one;
- every daemon stopped with SIGTERM exited 0, and the runs settled in time.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stageline.core.errors import StagelineError
from stageline.core.patch import PIPELINE_DATA_KEY

from .actions import EXPECT_FAILED, Chaos
from .app import Execution, read_step_log
from .settle import Settled

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "tests"))
from invariants import check_run  # the shared invariant checker

ALLOWED = {"succeeded", "failed", "aborted", "expired", "paused", "quarantined"}
IGNORED_KEYS = (PIPELINE_DATA_KEY, "by")
"""State keys the journal does not build: the recovery count, and resume patches."""
COMMITS = ("stage:success", "stage:paused")
SLACK = 0.001
"""Seconds: an execution that began this long after its stage's commit event re-ran it."""


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    figures: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    suspects: set[str] = field(default_factory=set)
    """Runs a violation names (their daemons' log lines are printed)."""

    def add(self, problem: str, run_id: str | None = None) -> None:
        self.violations.append(problem)
        if run_id is not None:
            self.suspects.add(run_id)


class AsRunning:
    """The store, with a quarantined run read as "running" (for `check_run`)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def get_run(self, run_id: str) -> Any:
        return self._as_running(self.store.get_run(run_id))

    def load_run(self, run_id: str) -> Any:
        return self._as_running(self.store.load_run(run_id))

    def read_events(self, run_id: str, after_seq: int = 0) -> Any:
        return self.store.read_events(run_id, after_seq)

    @staticmethod
    def _as_running(value: Any) -> Any:
        return replace(value, status="running") if value.status == "quarantined" else value


def judge(chaos: Chaos, settled: Settled) -> Verdict:
    verdict = Verdict()
    executions = read_step_log(chaos.fleet.folder)
    infos = {info.run_id: info for info in chaos.store.list_runs()}
    for _, info in sorted(infos.items()):
        verdict.statuses[info.status] += 1
        _judge_run(chaos, verdict, info, executions)
    _judge_lost(chaos, verdict, infos)
    _judge_requests(chaos, verdict)
    _judge_daemons(verdict, settled)
    verdict.figures["executions"] = sum(len(v) for v in executions.values())
    return verdict


def _judge_run(chaos: Chaos, verdict: Verdict, info: Any, executions: Any) -> None:
    run_id, status = info.run_id, info.status
    if run_id not in chaos.ledger.starts:
        verdict.add(f"run {run_id!r} ({status}): not a run the script started", run_id)
    if status == "corrupt" and run_id not in chaos.ledger.damaged:
        verdict.add(f"run {run_id!r} reads as corrupt, but the script never damaged it", run_id)
    elif status not in ALLOWED and status != "corrupt":
        owner = _daemon_of(chaos, info.owner)
        verdict.add(f"run {run_id!r} was left {status} at stage {info.stage!r} ({owner})", run_id)
    if status != "corrupt":
        _invariants(chaos, verdict, run_id)
    try:
        journal = chaos.store.read_events(run_id)
    except StagelineError as exc:
        verdict.add(f"run {run_id!r}: its journal cannot be read: {exc}", run_id)
        return
    _judge_reruns(verdict, run_id, journal, executions)


def _invariants(chaos: Chaos, verdict: Verdict, run_id: str) -> None:
    initial = chaos.ledger.starts.get(run_id, {})
    try:
        check_run(AsRunning(chaos.store), run_id, initial=initial, ignore=IGNORED_KEYS)
    except (AssertionError, StagelineError) as exc:
        verdict.add(f"invariant: {exc}", run_id)


def _judge_reruns(verdict: Verdict, run_id: str, journal: list[Any], executions: Any) -> None:
    committed = 0
    for event in journal:
        if event.name not in COMMITS:
            continue
        committed += 1
        ran: list[Execution] = executions.get((run_id, event.stage_id), [])
        token = _token(event)
        if token not in {e.token for e in ran}:
            verdict.add(f"run {run_id!r}: the commit of stage {event.stage_id!r} names token "
                        f"{token!r}, which no logged execution has", run_id)  # fmt: skip
        for late in (e for e in ran if e.token != token and e.at > event.ts + SLACK):
            verdict.add(f"run {run_id!r}: committed stage {event.stage_id!r} ran again "
                        f"{late.at - event.ts:.3f}s after its commit (pid {late.pid})", run_id)  # fmt: skip
    ran_here = sum(len(v) for (r, _), v in executions.items() if r == run_id)
    verdict.figures["uncommitted_executions"] += max(0, ran_here - committed)


def _token(event: Any) -> Any:
    """The token the committed step returned (results: step id -> its patch)."""
    for patch in (event.results or {}).values():
        if isinstance(patch, dict) and event.stage_id in patch:
            return patch[event.stage_id]
    return None


def _judge_lost(chaos: Chaos, verdict: Verdict, infos: dict[str, Any]) -> None:
    """A start answered "done" made a run that is in the store."""
    answers = chaos.raw.answers()
    for request_id, (kind, run_id, _) in chaos.ledger.requests.items():
        answer = answers.get(request_id)
        done = answer is not None and answer.status == "done"
        if kind == "start" and done and run_id not in infos:
            verdict.add(f"run {run_id!r}: its start was answered done, the run is lost", run_id)


def _judge_requests(chaos: Chaos, verdict: Verdict) -> None:
    answers = chaos.raw.answers()
    for request_id, answer in sorted(answers.items()):
        verdict.answers[answer.status] += 1
        if answer.status == "claimed" and chaos.fleet.died(answer.claimed_by):
            verdict.answers["claimed"] -= 1
            verdict.answers["claimed_by_dead"] += 1
        elif answer.status not in ("done", "failed"):
            claimer = _daemon_of(chaos, answer.claimed_by)
            verdict.add(f"request {request_id!r} ({answer.kind} of {answer.run_id!r}) is "
                        f"{answer.status} ({claimer})", answer.run_id)  # fmt: skip
    _judge_twins(chaos, verdict, answers)
    for request_id, (kind, run_id, category) in sorted(chaos.ledger.requests.items()):
        found = answers.get(request_id)
        if found is None:
            verdict.add(f"request {request_id!r} ({kind} of {run_id!r}) is not in the mailbox")
        elif category in EXPECT_FAILED and found.status == "done":
            verdict.add(f"{category} request {request_id!r} ({kind} of {run_id!r}) was "
                        "answered done, not failed", run_id)  # fmt: skip
        elif category == "poison" and found.status == "failed":
            verdict.figures["poison_failed"] += 1


def _judge_twins(chaos: Chaos, verdict: Verdict, answers: dict[str, Any]) -> None:
    """Of two starts or resumes of one run posted back to back, one may win."""
    for first, second in chaos.ledger.twins:
        kind, run_id, _ = chaos.ledger.requests[first]
        if all(getattr(answers.get(r), "status", None) == "done" for r in (first, second)):
            verdict.add(f"two {kind} requests of run {run_id!r} were both answered done "
                        f"({first}, {second})", run_id)  # fmt: skip


def _daemon_of(chaos: Chaos, owner: str | None) -> str:
    """Which daemon `owner` (a lease owner or claimer name) is, and what became of it."""
    proc = chaos.fleet.of(owner)
    if proc is None:
        return f"owner {owner}"
    return f"owner {proc.name}, pid {proc.pid}, {proc.ended or 'running'}"


def _judge_daemons(verdict: Verdict, settled: Settled) -> None:
    for name, code in sorted(settled.stop_codes.items()):
        if code != 0:
            verdict.add(f"daemon {name} exited {code} on SIGTERM, not 0")
    if settled.left:
        verdict.add(f"{len(settled.left)} run(s) still going after settling: "
                    f"{sorted(settled.left)[:10]}")  # fmt: skip
        verdict.suspects.update(settled.left[:5])
    if settled.pending_requests:
        verdict.add(f"{settled.pending_requests} request(s) still pending after settling")


def log_lines(folder: Path, run_id: str, limit: int = 12) -> list[str]:
    """The daemons' log lines naming `run_id` (the last `limit`, in time order), each
    prefixed by its daemon."""
    found = []
    for log in folder.glob("d*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if run_id in line:
                found.append((_timestamp(line), f"{log.stem}: {line}"))
    return [line for _, line in sorted(found)[-limit:]]


def _timestamp(line: str) -> str:
    try:
        return str(json.loads(line).get("timestamp", ""))
    except ValueError:
        return ""
