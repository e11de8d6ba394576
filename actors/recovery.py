"""Taking runs up again from the store: retry of a failed run, recovery of an orphan.

Used by the public Registry. Each continues a run from its last committed stage with
one compare-and-set (core/transitions.retry or .recover) that takes the run's lease for
this registry, then starts it through its factory: of processes racing for a run,
exactly one wins.
"""

from __future__ import annotations

import logging
from typing import Any

from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.checkpoint import checkpoint_from_bytes, decode_bundle
from stageline.core.errors import (
    ConflictError,
    RunAborted,
    RunNotFound,
    RunStateError,
    StagelineError,
)
from stageline.core.store import RunRecord, Store
from stageline.core.supervision import is_orphaned, over_recoveries, recoveries

from .admission import take_slot
from .container import Container
from .handle import FactoryLink
from .registry_messages import ArmWakes, Counted
from .supervisor import Supervisor

_log = logging.getLogger("stageline")


def find_run(
    supervisor: Supervisor, run_id: str, factory: FactoryLink | None
) -> tuple[FactoryLink, Store, RunRecord]:
    """The factory, store and record of `run_id` (the given factory, else a known one)."""
    candidates = [factory] if factory is not None else supervisor.known_factories()
    for candidate in candidates:
        store = candidate.store_for(run_id)
        try:
            record = store.load_run(run_id)
        except RunNotFound:
            continue
        if record.pipeline_id == candidate.pipeline.id:
            return candidate, store, record
        if factory is not None:
            raise StagelineError(
                f"run {run_id!r} belongs to pipeline {record.pipeline_id!r}, not "
                f"{candidate.pipeline.id!r}; retry it with that pipeline's factory"
            )
    raise RunNotFound(
        f"run {run_id!r} is in none of the stores of this registry's factories "
        f"(pipelines: {', '.join(sorted(f.pipeline.id for f in candidates)) or 'none'}); "
        "pass factory= to retry it"
    )


_RETRYABLE = frozenset({lifecycle.FAILED, lifecycle.QUARANTINED})


def retry(
    supervisor: Supervisor, run_id: str, factory: FactoryLink | None, patch: dict[str, Any] | None
) -> Any:
    """Registry.retry of a run read from the store: claim it failed -> running; its context."""
    factory, store, record = find_run(supervisor, run_id, factory)
    if record.status not in _RETRYABLE:
        raise RunStateError(
            f"run {run_id!r} is {record.status!r}, not failed or quarantined; only those "
            "can be retried (resume a paused run, recover a running one)"
        )
    context = claim(supervisor, factory, store, record, lifecycle.RETRY, patch)
    if context is None:
        raise RunStateError(
            f"run {run_id!r} is no longer {record.status}: another retry won the race; "
            "it runs elsewhere now"
        )
    return context


def claim(
    supervisor: Supervisor,
    factory: FactoryLink,
    store: Store,
    record: RunRecord,
    event: str,
    patch: dict[str, Any] | None = None,
) -> Any:
    """Continue `record` from its stage (`event`: "retry", with `patch`, or "recover"): one
    compare-and-set, then a started RunContext. None if another process won the race."""
    if record.stage is None or not factory.pipeline.has_stage(record.stage):
        raise StagelineError(
            f"run {record.run_id!r} is at stage {record.stage!r}, which pipeline "
            f"{factory.pipeline.id!r} v{factory.pipeline.version} does not have; "
            "use a factory with the pipeline version it ran"
        )
    now, lease = supervisor.config.clock.wall(), supervisor.lease()
    if event == lifecycle.RETRY:
        commit = tr.retry(record, now, lease, patch=patch)
    else:
        commit = tr.recover(record, now, lease)
    try:  # through the pipeline's limits: it may wait "queued" for a slot
        claimed, _ = take_slot(store, factory.pipeline, record, commit, lease, now)
    except ConflictError:
        return None
    container = Container(record.run_id, _artifacts(factory, record))
    run = factory.live_run(store, claimed, record.stage, container, resumed=True)
    if event == lifecycle.RETRY:
        supervisor.actor.tell(Counted("restarts", 1))
    run.start()
    return run.context


def recover(supervisor: Supervisor, factory: FactoryLink) -> list[Any]:
    """Start the orphaned runs of `factory`'s pipeline this registry wins (see
    Registry.recover); their RunContexts."""
    store = factory.store
    assert store is not None  # Registry.recover refuses a factory without one
    contexts = []
    found = [
        *store.list_runs(lifecycle.RUNNING, factory.pipeline.id),
        *store.list_runs(lifecycle.PENDING, factory.pipeline.id),
        *store.list_runs(lifecycle.QUEUED, factory.pipeline.id),
    ]
    for info in found:
        if info.run_id in supervisor.live:
            continue
        if info.status == lifecycle.CORRUPT:  # logged by the store; the others go on
            continue
        context = _recover_one(supervisor, factory, store, info.run_id)
        if context is not None:
            contexts.append(context)
    for context in contexts:
        _log.info("stageline registry: recovered run %r", context.run_id)
    supervisor.actor.tell(Counted("recovered", len(contexts)))
    arm_wakes(supervisor, factory)
    return contexts


def arm_wakes(supervisor: Supervisor, factory: FactoryLink) -> None:
    """Arm a timer for every sleeping run, and paused run with an expiry, of `factory`'s
    pipeline: those due wake now, the others when due (whichever registry slept them)."""
    store = factory.store
    assert store is not None
    try:
        waking = store.list_waking(factory.pipeline.id)
    except StagelineError:
        _log.exception("stageline registry: listing the sleeping runs failed")
        return
    if waking:
        supervisor.actor.tell(ArmWakes(tuple(waking)))


def _recover_one(supervisor: Supervisor, factory: FactoryLink, store: Store, run_id: str) -> Any:
    config = supervisor.config
    now = config.clock.wall()
    try:
        if not is_orphaned(store.load_run(run_id), now):
            return None
        if not store.claim_run(run_id, config.owner, now + config.lease_ttl, now=now):
            return None  # another process was first
        return _take_over(supervisor, factory, store, store.load_run(run_id))
    except StagelineError:  # this run cannot go on here (damaged?); the others still can
        _log.exception("stageline registry: recovering run %r failed", run_id)
        return None


def _take_over(
    supervisor: Supervisor, factory: FactoryLink, store: Store, record: RunRecord
) -> Any:
    """Start a run this registry just claimed: a pending one at its entry, a running one
    from its last commit."""
    if record.owner != supervisor.config.owner:
        return None
    if _abort_requested(supervisor, store, record):
        return None
    if record.status == lifecycle.PENDING:  # never started: start it as planned
        run = factory.live_run(store, record, str(record.stage), Container(record.run_id))
        run.start()
        return run.context
    if record.status == lifecycle.QUEUED:  # its registry died: wait for a slot here
        container = Container(record.run_id, _artifacts(factory, record))
        run = factory.live_run(store, record, str(record.stage), container, resumed=True)
        run.start()
        return run.context
    if record.status == lifecycle.RUNNING:
        if over_recoveries(record, supervisor.config.max_recoveries):
            _quarantine(supervisor, store, record)
            return None
        return claim(supervisor, factory, store, record, lifecycle.RECOVER)
    return None


def _quarantine(supervisor: Supervisor, store: Store, record: RunRecord) -> None:
    """The run keeps dying without progress: set it aside for a person to look at."""
    count = recoveries(record.state)
    error = StagelineError(
        f"run {record.run_id!r} was recovered {count} times without committing a stage "
        f"(max_recoveries={supervisor.config.max_recoveries}); it is quarantined: find why "
        "it crashes (see its journal and the daemon's log), then `stageline retry` it"
    )
    try:
        store.commit(tr.quarantine(record, supervisor.config.clock.wall(), error))
    except ConflictError:
        return  # it moved on meanwhile: not ours to quarantine
    _log.error("stageline registry: run %r quarantined after %d recoveries", record.run_id, count)
    supervisor.actor.tell(Counted("quarantined", 1))


def _abort_requested(supervisor: Supervisor, store: Store, record: RunRecord) -> bool:
    """Abort instead of recovering a run whose abort flag is set; True if it was."""
    requests = store.abort_requests([record.run_id])
    if record.run_id not in requests:
        return False
    reason = requests[record.run_id]
    error = RunAborted(f"run {record.run_id!r} was aborted" + (f": {reason}" if reason else ""))
    progress = tr.Progress(record.last_seq, record.stage_runs)
    now = supervisor.config.clock.wall()
    try:
        store.commit(tr.abort(record, now, progress, stage=record.stage, error=error))
    except ConflictError:
        return True  # it moved on meanwhile
    _log.info("stageline registry: run %r aborted by request instead of recovered", record.run_id)
    return True


def _artifacts(factory: FactoryLink, record: RunRecord) -> dict[str, Any]:
    """The artifacts a run left in its checkpoint's bundle (a run that paused), else none.

    Artifacts written since live only in the memory of the process that died.
    """
    if record.checkpoint is None:
        return {}
    try:
        checkpoint = checkpoint_from_bytes(record.checkpoint, record.run_id)
        if checkpoint.container_bundle is None:
            return {}
        data: dict[str, Any] = decode_bundle(
            checkpoint.container_bundle, record.run_id, max_bytes=factory.max_bundle_bytes
        )
        return data
    except StagelineError:
        _log.exception("stageline registry: the artifacts of run %r are unreadable", record.run_id)
        return {}
