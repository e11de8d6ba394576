"""The store-level invariants every run must keep, whatever happened to its process.

    from invariants import check_run, check_store

    summary = check_run(store, run_id)              # raises AssertionError naming the run
    summaries = check_store(store, expect=run_ids)  # every run; none lost, none unexpected

Read from the store only (`get_run`, `load_run`, `read_events`), so it applies after a
kill -9, a store fault or a soak. For a run without child pipelines it checks:

- status is a known one; a paused run has a checkpoint that decodes, for this run, whose
  `resume_at` is the run's position, and whose bundle (if any) decodes; an ended run
  (succeeded, failed, aborted, expired) has none.
- the journal: seqs strictly increase and never pass the run's `last_seq`; it opens with
  `pipeline:start`; each segment (from a `pipeline:start`) holds whole stages only: every
  `stage:start` is directly followed by that stage's end (success, paused or failure), as
  they were committed together; a terminal `pipeline:*` event ends a segment, and the last
  one matches the status (succeeded -> pipeline:success, paused -> pipeline:paused, failed
  and aborted -> pipeline:failure, with `error.kind == "aborted"` for aborts; an abort
  while paused adds its pipeline:failure right after the pipeline:paused).
- no committed stage ran twice: in a linear pipeline (no backward jumps; the default)
  each stage has at most one `stage:success`, and a stage that succeeded never starts again.
- state agrees with the journal: merging the `results` of every committed stage
  (`stage:success`, `stage:paused`) in order onto `initial` gives the stored state, apart
  from `ignore` keys (e.g. keys written by resume patches, which are not journaled).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stageline.core.checkpoint import checkpoint_from_bytes, decode_bundle
from stageline.core.patch import merge_all

STATUSES = {"pending", "running", "paused", "succeeded", "failed", "aborted", "expired"}
ENDED = {"succeeded", "failed", "aborted", "expired"}
STAGE_ENDS = {"stage:success", "stage:paused", "stage:failure"}
TERMINAL = {"pipeline:success", "pipeline:paused", "pipeline:failure"}
LAST_EVENT = {
    "succeeded": "pipeline:success",
    "paused": "pipeline:paused",
    "failed": "pipeline:failure",
    "aborted": "pipeline:failure",
}


@dataclass
class RunSummary:
    """What the journal says about one run."""

    run_id: str
    status: str
    stage: str | None
    committed: list[str] = field(default_factory=list)
    """The stages whose commit the journal holds (success or pause), in order."""
    segments: int = 0
    """How many times the run was started (pipeline:start events: start, resumes, retries)."""
    failures: int = 0


def check_run(
    store: Any,
    run_id: str,
    *,
    initial: dict[str, Any] | None = None,
    ignore: Iterable[str] = (),
    linear: bool = True,
    replay: bool = True,
) -> RunSummary:
    """Check one run's invariants (see the module docstring); return its summary."""
    info = store.get_run(run_id)
    record = store.load_run(run_id)
    where = f"run {run_id!r} ({info.status} at {info.stage!r})"
    assert info.status in STATUSES, f"{where}: unknown status"
    journal = store.read_events(run_id)
    summary = RunSummary(run_id, info.status, info.stage)

    _check_checkpoint(record, info, where)
    _check_journal(journal, record, summary, where)
    if linear:
        successes = [e.stage_id for e in journal if e.name == "stage:success"]
        twice = sorted({s for s in successes if successes.count(s) > 1})
        assert not twice, f"{where}: stages committed twice: {twice}"
        for i, event in enumerate(journal):
            if event.name == "stage:start" and event.stage_id in successes[: _before(journal, i)]:
                raise AssertionError(f"{where}: stage {event.stage_id!r} ran again after commit")
    if replay:
        committed = [e for e in journal if e.name in ("stage:success", "stage:paused")]
        patches = [
            (f"{e.stage_id}/{k}", v) for e in committed for k, v in (e.results or {}).items()
        ]
        expected = merge_all(dict(initial or {}), patches)
        skip = set(ignore)
        got = {k: v for k, v in info.state.items() if k not in skip}
        want = {k: v for k, v in expected.items() if k not in skip}
        assert got == want, f"{where}: state {got!r} is not what the journal built {want!r}"
    return summary


def _before(journal: list[Any], index: int) -> int:
    """How many stage:success events come before `journal[index]`."""
    return sum(1 for e in journal[:index] if e.name == "stage:success")


def _check_checkpoint(record: Any, info: Any, where: str) -> None:
    if info.status == "paused":
        assert record.checkpoint is not None, f"{where}: paused without a checkpoint"
        checkpoint = checkpoint_from_bytes(record.checkpoint, record.run_id)
        assert checkpoint.resume_at == info.stage, (
            f"{where}: checkpoint resumes at {checkpoint.resume_at!r}, the run is at {info.stage!r}"
        )
        if checkpoint.container_bundle is not None:
            decode_bundle(checkpoint.container_bundle, record.run_id)  # whole, or it raises
    elif info.status in ENDED:
        assert record.checkpoint is None, f"{where}: an ended run kept its checkpoint"


def _check_journal(journal: list[Any], record: Any, summary: RunSummary, where: str) -> None:
    names = [e.name for e in journal]
    seqs = [e.seq for e in journal]
    assert all(a < b for a, b in itertools.pairwise(seqs)), f"{where}: seqs {seqs}"
    assert not seqs or seqs[-1] <= record.last_seq, f"{where}: journal past last_seq"
    if record.status == "pending":
        assert journal == [], f"{where}: a pending run with a journal {names}"
        return
    if record.status == "aborted" and names in ([], ["pipeline:failure"]):
        return  # aborted before it ever started (its abort journals only its failure)
    assert names and names[0] == "pipeline:start", f"{where}: journal {names}"
    ended = False
    i = 0
    while i < len(journal):
        event = journal[i]
        if event.name == "pipeline:start":
            assert i == 0 or ended or names[i - 1] != "stage:start", f"{where}: {names}"
            summary.segments += 1
            ended = False
        elif event.name == "stage:start":
            assert not ended, f"{where}: a stage started after the segment ended: {names}"
            assert i + 1 < len(journal), f"{where}: torn stage {event.stage_id!r}: {names}"
            end = journal[i + 1]
            assert end.name in STAGE_ENDS and end.stage_id == event.stage_id, (
                f"{where}: stage:start of {event.stage_id!r} followed by {end.name} "
                f"of {end.stage_id!r}: {names}"
            )
            if end.name in ("stage:success", "stage:paused"):
                summary.committed.append(end.stage_id)
            i += 2
            continue
        elif event.name in TERMINAL:
            aborted_while_paused = (
                event.name == "pipeline:failure"
                and names[i - 1] == "pipeline:paused"
                and getattr(event.error, "kind", None) == "aborted"
            )
            assert not ended or aborted_while_paused, (
                f"{where}: two terminal events in a segment: {names}"
            )
            ended = True
            summary.failures += event.name == "pipeline:failure"
        else:
            raise AssertionError(f"{where}: unexpected {event.name} in the journal: {names}")
        i += 1
    status = record.status
    if status in LAST_EVENT:
        assert ended and names[-1] == LAST_EVENT[status], f"{where}: journal ends {names[-3:]}"
        last = journal[-1]
        if status == "aborted":
            assert getattr(last.error, "kind", None) == "aborted", f"{where}: {last.error!r}"
    elif status == "running":
        assert not ended, f"{where}: running, but its journal ended the segment: {names[-3:]}"
    elif status == "expired":
        assert names[-1] == "pipeline:paused", f"{where}: expired, journal ends {names[-3:]}"


def check_store(
    store: Any, *, expect: Iterable[str] | None = None, **options: Any
) -> dict[str, RunSummary]:
    """Check every run in `store`; with `expect`, exactly those runs must be there."""
    run_ids = [info.run_id for info in store.list_runs()]
    if expect is not None:
        wanted = set(expect)
        assert set(run_ids) == wanted, (
            f"runs lost: {sorted(wanted - set(run_ids))[:5]}, "
            f"unexpected: {sorted(set(run_ids) - wanted)[:5]}"
        )
    return {run_id: check_run(store, run_id, **options) for run_id in run_ids}
