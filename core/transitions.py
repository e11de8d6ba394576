"""Transitions: the complete commit each lifecycle event writes to a run.

This module is the only writer of what a lifecycle event stores: one function per event
(start, stage committed, succeed, pause, sleep, fail, abort, abort while paused or
sleeping, crash, expire, expire on to a stage, resume with patch, wake, retry, recover),
each returning the `Commit` the store applies in one compare-and-set. The status comes
from `lifecycle.TRANSITIONS`; whether the commit sets, keeps or clears the checkpoint,
the error record and the lease comes from `lifecycle.EFFECTS`; `wake_at` is written by
every commit (set by a sleep or a pause with an expiry, cleared by every other); the
pipeline-level event that opens or closes a segment is built here, numbered after the
run's last seq. Actors call these and carry out what they return: they build no
`Commit` and no pipeline-level `Event` themselves.

Pure: no threads, no I/O, no clock (the caller passes `now`, wall-clock seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import events as ev
from . import lifecycle
from .checkpoint import Checkpoint, checkpoint_to_bytes
from .children import positions, release_paused
from .clock import iso_utc
from .definition import Pause, Pipeline, Sleep, Stage
from .errors import error_to_record
from .events import Event
from .patch import copy_state, merge, public_state
from .store import Commit, RunRecord
from .supervision import recoveries, with_attempts, with_failure, with_recoveries
from .timing import with_expired, without_expired


@dataclass(frozen=True, slots=True)
class Lease:
    """Who drives a run and until when (wall-clock seconds) unless renewed."""

    owner: str
    until: float


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a live run stands beyond its record: its events numbered so far, its stage
    executions, and the stage's events that go into this commit (in seq order)."""

    seq: int
    stage_runs: int
    events: tuple[Event, ...] = ()


# --- segment openers --------------------------------------------------------------------


def start(record: RunRecord, entry: str, now: float) -> Commit:
    """pending -> running: the run's first segment begins at `entry`."""
    opening = _opening(record, entry, now, resumed=False)
    return _commit(record, lifecycle.START, now, events=(opening,), stage=entry)


def resume(
    record: RunRecord,
    now: float,
    *,
    patch: Mapping[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    lease: Lease | None = None,
) -> Commit:
    """paused -> running with `patch` merged over the committed (or migrated) `state`.

    Paused children are released to run on from this commit; the new segment's
    pipeline:start rides on it (one commit, not two).
    """
    return _continued(record, lifecycle.RESUME, now, patch, state, lease)


def wake(
    record: RunRecord,
    now: float,
    lease: Lease | None = None,
    *,
    patch: Mapping[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> Commit:
    """sleeping -> running at the stage it slept towards: its `wake_at` came, or a
    resume woke it early with `patch`."""
    return _continued(record, lifecycle.WAKE, now, patch, state, lease)


def _continued(
    record: RunRecord,
    event: str,
    now: float,
    patch: Mapping[str, Any] | None,
    state: dict[str, Any] | None,
    lease: Lease | None,
) -> Commit:
    resumed = record.state if state is None else state
    if patch:
        resumed = merge(resumed, patch)
    opening = _opening(record, record.stage, now, resumed=True)
    return _commit(record, event, now, lease, events=(opening,), state=release_paused(resumed))


def expire_on(
    record: RunRecord,
    now: float,
    stage: str,
    lease: Lease | None = None,
    *,
    state: dict[str, Any] | None = None,
) -> Commit:
    """paused -> running at `stage` (its `Pause.on_expiry`) with the committed (or
    migrated) `state`: nobody resumed it in time.

    The stage sees `state[PIPELINE_DATA_KEY]["expired"] == True`; its commit clears it.
    """
    opening = _opening(record, stage, now, resumed=True)
    state = release_paused(with_expired(record.state if state is None else state))
    return _commit(
        record, lifecycle.EXPIRE_ON, now, lease, events=(opening,), stage=stage, state=state
    )


def retry(
    record: RunRecord,
    now: float,
    lease: Lease | None = None,
    *,
    patch: Mapping[str, Any] | None = None,
) -> Commit:
    """failed (or quarantined) -> running from the failed stage, with `patch` merged (a
    fix for what made it fail); the failed attempt is kept in the state, and the recovery
    count starts again."""
    opening = _opening(record, record.stage, now, resumed=True)
    state = merge(record.state, patch) if patch else record.state
    state = with_recoveries(with_failure(state, record.error), 0)
    return _commit(record, lifecycle.RETRY, now, lease, events=(opening,), state=state)


def recover(record: RunRecord, now: float, lease: Lease | None = None) -> Commit:
    """running -> running under a new owner, from the last committed stage.

    Counts the recovery in the run's state; the next stage commit clears the count
    (see `quarantine`).
    """
    opening = _opening(record, record.stage, now, resumed=True)
    state = with_recoveries(record.state, recoveries(record.state) + 1)
    return _commit(record, lifecycle.RECOVER, now, lease, events=(opening,), state=state)


def queue(record: RunRecord, refused: Commit, now: float, lease: Lease | None = None) -> Commit:
    """-> queued: the run's limits did not admit `refused` (the start, resume, wake, retry,
    recovery or expiry commit it was to make). The run waits with that commit's state and
    stage (a resume's patch is in it), and no event: its segment opens when admitted."""
    return _commit(
        record, lifecycle.QUEUE, now, lease, stage=refused.stage, state=refused.state,
        last_seq=record.last_seq, events=(),
    )  # fmt: skip


def admit(record: RunRecord, now: float, lease: Lease | None = None) -> Commit:
    """queued -> running at its stage: a slot freed. pipeline:start opens the segment
    (`resumed` unless the run never ran)."""
    opening = _opening(record, record.stage, now, resumed=record.last_seq > 0)
    return _commit(record, lifecycle.ADMIT, now, lease, events=(opening,))


def quarantine(record: RunRecord, now: float, error: BaseException) -> Commit:
    """running -> quarantined: recovered too often without committing a stage.

    Recovery and supervision leave it alone; a retry by hand releases it.
    """
    failure = with_attempts(error_to_record(error), record.state)
    return _commit(record, lifecycle.QUARANTINE, now, error=failure)


def claimed_opening(record: RunRecord, entry: str) -> Event:
    """The pipeline:start that a resume's, retry's, recovery's or admission's claim
    committed (the record's last event), as the segment's actor delivers it."""
    return ev.root_event(
        ev.PIPELINE_START, record.run_id, record.pipeline_id, record.last_seq,
        record.updated_at, entry=entry, resumed=record.last_seq > 1,
    )  # fmt: skip


# --- stage ends -------------------------------------------------------------------------


def stage_committed(
    record: RunRecord,
    now: float,
    progress: Progress,
    *,
    next_stage: str | None,
    state: dict[str, Any],
    patch: dict[str, Any] | None = None,
) -> Commit:
    """running -> running: a stage's merged state, with the run's next position."""
    return _progressed(record, lifecycle.COMMIT, now, progress, (), next_stage, state, patch)


def succeed(
    record: RunRecord,
    now: float,
    progress: Progress,
    *,
    state: dict[str, Any],
    patch: dict[str, Any] | None = None,
) -> Commit:
    """running -> succeeded with the last stage's state; pipeline:success closes it."""
    end = _closing(record, ev.PIPELINE_SUCCESS, progress, now, state=_shown(state))
    return _progressed(record, lifecycle.SUCCEED, now, progress, (end,), None, state, patch)


def pause(
    record: RunRecord,
    now: float,
    progress: Progress,
    *,
    pipeline: Pipeline,
    stage: Stage,
    answer: Pause,
    state: dict[str, Any],
    patch: dict[str, Any] | None = None,
    bundle: bytes | None = None,
) -> Commit:
    """running -> paused: the stage's state and the checkpoint to resume at `answer.resume_at`.

    `bundle` is the run's artifacts when they must survive the process at once (no
    registry to export them later, or `persist=True`).
    """
    deadline = None if answer.expires_in is None else now + answer.expires_in
    checkpoint = paused_checkpoint(record, pipeline, stage, answer.resume_at, state, now, bundle)
    if deadline is not None:
        checkpoint = replace(checkpoint, expires_at=iso_utc(deadline), on_expiry=answer.on_expiry)
    end = _closing(
        record, ev.PIPELINE_PAUSED, progress, now,
        checkpoint=checkpoint, state=_shown(state), pause_timeout=answer.timeout,
    )  # fmt: skip
    return _progressed(
        record, lifecycle.PAUSE, now, progress, (end,), answer.resume_at, state, patch,
        checkpoint=checkpoint_to_bytes(checkpoint), wake_at=deadline,
    )  # fmt: skip


def sleep(
    record: RunRecord,
    now: float,
    progress: Progress,
    *,
    pipeline: Pipeline,
    stage: Stage,
    answer: Sleep,
    state: dict[str, Any],
    patch: dict[str, Any] | None = None,
    bundle: bytes | None = None,
) -> Commit:
    """running -> sleeping until `answer.wake_at(now)`, then on at `answer.resume_at`.

    The checkpoint says where it wakes and carries its artifacts (`bundle`): a sleeping
    run holds no actor to keep them.
    """
    wake_at = answer.wake_at(now)
    checkpoint = paused_checkpoint(record, pipeline, stage, answer.resume_at, state, now, bundle)
    end = _closing(record, ev.PIPELINE_SLEEPING, progress, now, wake_at=iso_utc(wake_at))
    return _progressed(
        record, lifecycle.SLEEP, now, progress, (end,), answer.resume_at, state, patch,
        checkpoint=checkpoint_to_bytes(checkpoint), wake_at=wake_at,
    )  # fmt: skip


def fail(record: RunRecord, now: float, progress: Progress, *, stage: str | None,
         error: BaseException) -> Commit:  # fmt: skip
    """running -> failed at `stage`, keeping the state of the last commit."""
    return _ended_by(record, lifecycle.FAIL, now, progress, stage, error)


def abort(record: RunRecord, now: float, progress: Progress, *, stage: str | None,
          error: BaseException) -> Commit:  # fmt: skip
    """pending or running -> aborted; nothing of the stage in flight is committed."""
    return _ended_by(record, lifecycle.ABORT, now, progress, stage, error)


def abort_paused(record: RunRecord, now: float, error: BaseException) -> Commit:
    """paused (or sleeping) -> aborted in one compare-and-set, with no actor started."""
    end = _closing(record, ev.PIPELINE_FAILURE, _next(record), now, error=error,
                   state=_shown(record.state))  # fmt: skip
    return _commit(
        record, lifecycle.ABORT_PAUSED, now, events=(end,), last_seq=end.seq,
        error=error_to_record(error),
    )  # fmt: skip


def crash(record: RunRecord, now: float, error: BaseException) -> Commit:
    """running -> failed after the run's actor died of a runtime bug.

    `record.last_seq` is the seq of the `crash_event` the dying actor already
    delivered; the journal gets that same event.
    """
    end = crash_event(record, now, error)
    failure = with_attempts(error_to_record(error), record.state)
    return _commit(record, lifecycle.CRASH, now, events=(end,), error=failure)


def crash_event(record: RunRecord, now: float, error: BaseException) -> Event:
    """The pipeline:failure of a run whose actor died, numbered `record.last_seq`."""
    return ev.root_event(
        ev.PIPELINE_FAILURE, record.run_id, record.pipeline_id, record.last_seq, now,
        error=error, state=_shown(record.state),
    )  # fmt: skip


def expire(record: RunRecord, now: float) -> Commit:
    """paused -> expired: the checkpoint_ttl ran out; the checkpoint is cleared."""
    return _commit(record, lifecycle.EXPIRE, now)


# --- values the transitions share ---------------------------------------------------------


def paused_checkpoint(
    record: RunRecord,
    pipeline: Pipeline,
    stage: Stage,
    resume_at: str,
    state: dict[str, Any],
    now: float,
    bundle: bytes | None = None,
) -> Checkpoint:
    """The checkpoint of a run pausing (or going to sleep) after `stage`."""
    return Checkpoint(
        run_id=record.run_id,
        pipeline_id=pipeline.id,
        pipeline_version=pipeline.version,
        resume_at=resume_at,
        paused_at_stage_id=stage.id,
        paused_at_stage_label=str(stage.label),
        paused_on=iso_utc(now),
        children=copy_state(positions(state)),
        container_bundle=bundle,
    )


def _opening(record: RunRecord, entry: str | None, now: float, *, resumed: bool) -> Event:
    return ev.root_event(
        ev.PIPELINE_START, record.run_id, record.pipeline_id, record.last_seq + 1, now,
        entry=entry, resumed=resumed,
    )  # fmt: skip


def _closing(record: RunRecord, name: str, progress: Progress, now: float, **payload: Any) -> Event:
    """The pipeline-level event after the stage's events: numbered `progress.seq + 1`."""
    return ev.root_event(name, record.run_id, record.pipeline_id, progress.seq + 1, now, **payload)


def _next(record: RunRecord) -> Progress:
    return Progress(record.last_seq, record.stage_runs)


def _shown(state: dict[str, Any]) -> dict[str, Any]:
    """The state as events carry it: the user's copy, never the runtime's."""
    shown: dict[str, Any] = copy_state(public_state(state))
    return shown


def _ended_by(
    record: RunRecord,
    event: str,
    now: float,
    progress: Progress,
    stage: str | None,
    error: BaseException,
) -> Commit:
    state = record.state
    end = _closing(record, ev.PIPELINE_FAILURE, progress, now, error=error, state=_shown(state))
    failure = with_attempts(error_to_record(error), state)
    return _progressed(record, event, now, progress, (end,), stage, state, None, error=failure)


_PROGRESS = frozenset({lifecycle.COMMIT, lifecycle.SUCCEED, lifecycle.PAUSE, lifecycle.SLEEP})


def _progressed(
    record: RunRecord,
    event: str,
    now: float,
    progress: Progress,
    closing: tuple[Event, ...],
    stage: str | None,
    state: dict[str, Any],
    patch: dict[str, Any] | None,
    **written: Any,
) -> Commit:
    """A commit of a live segment: the stage's events, then `closing` (if any).

    A committed stage is progress: the run's recovery count starts again, and an expiry
    mark (see `expire_on`) has been seen by the stage it was for.
    """
    if event in _PROGRESS:
        state = without_expired(with_recoveries(state, 0))
    events = (*progress.events, *closing)
    last_seq = closing[-1].seq if closing else progress.seq
    return _commit(
        record, event, now, events=events, last_seq=last_seq, stage_runs=progress.stage_runs,
        stage=stage, state=state, patch=patch, **written,
    )  # fmt: skip


def _commit(
    record: RunRecord,
    event: str,
    now: float,
    lease: Lease | None = None,
    *,
    checkpoint: bytes | None = None,
    error: dict[str, Any] | None = None,
    **changes: Any,
) -> Commit:
    """The commit of `event` on `record`: status from the table, the checkpoint, error and
    lease as `lifecycle.EFFECTS` says, other fields from `changes` or kept."""
    status = lifecycle.transition(record.status, event)
    effects = lifecycle.EFFECTS[event]
    events: tuple[Event, ...] = changes.pop("events", ())
    fields: dict[str, Any] = {
        "stage": record.stage,
        "state": record.state,
        "last_seq": events[-1].seq if events else record.last_seq,
        "stage_runs": record.stage_runs,
        "wake_at": None,
        **changes,
    }
    taken = lease is not None and effects.lease == lifecycle.SET
    return Commit(
        run_id=record.run_id,
        expected_version=record.version,
        status=status,
        updated_at=now,
        events=events,
        checkpoint=_written(effects.checkpoint, record.checkpoint, checkpoint),
        error=_written(effects.error, record.error, error),
        owner=lease.owner if taken and lease is not None else None,
        lease_until=lease.until if taken and lease is not None else None,
        **fields,
    )


def _written(effect: str, stored: Any, given: Any) -> Any:
    if effect == lifecycle.KEEP:
        return stored
    if effect == lifecycle.CLEAR:
        return None
    return given
