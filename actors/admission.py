"""Taking a slot: how a run of a pipeline with limits goes on to "running", or waits.

Every commit that takes a run to "running" (a start, a resume, a wake, a retry, a
recovery, an expiry going on) goes through `take_slot`: without limits it is a plain
commit; with limits the store admits it only if each limit has a slot for it
(`Store.admit`, one transaction), else the run is committed "queued" instead
(`transitions.queue`, with the same state) and its registry admits it later, when a
slot frees (actors/admissions.py). SPEC section 20.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stageline.core import transitions as tr
from stageline.core.admission import Claim, claims_of
from stageline.core.definition import Pipeline
from stageline.core.errors import StagelineError
from stageline.core.store import Commit, RunRecord, Store
from stageline.core.timing import visible_state


def claims_for(pipeline: Pipeline, state: Mapping[str, Any], run_id: str) -> tuple[Claim, ...]:
    """The claims a run of `pipeline` with `state` makes (its key functions see the
    state its stage would see); AdmissionError if a key function fails."""
    claims: tuple[Claim, ...] = claims_of(pipeline.limits, visible_state(state), run_id)
    return claims


def commit_lease(commit: Commit) -> tr.Lease | None:
    """The lease `commit` takes (None: it takes none)."""
    if commit.owner is None or commit.lease_until is None:
        return None
    return tr.Lease(commit.owner, commit.lease_until)


def take_slot(
    store: Store,
    pipeline: Pipeline,
    record: RunRecord,
    commit: Commit,
    lease: tr.Lease | None,
    now: float,
) -> tuple[RunRecord, bool]:
    """Apply `commit` (the run goes on to "running") if the pipeline's limits admit it,
    else queue the run with the commit's state; the record after, and whether admitted.

    ConflictError (as a commit) if the run moved on meanwhile.
    """
    if not pipeline.limits:
        return record.applied(commit, store.commit(commit)), True
    if lease is None:
        raise StagelineError(
            f"run {record.run_id!r} of pipeline {pipeline.id!r} has limits: it needs a "
            "Registry (pass registry= to its PipelineFactory), which admits queued runs"
        )
    claims = claims_for(pipeline, commit.state, record.run_id)
    if store.admit(commit, claims, now):
        return record.applied(commit, commit.expected_version + 1), True
    queued = tr.queue(record, commit, now, lease)
    store.queue(queued, claims)
    return record.applied(queued, queued.expected_version + 1), False
