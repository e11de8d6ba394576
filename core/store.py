"""The Store protocol every backend implements, and the values that cross it.

A store serves many runs. Its write side is small: create a run, load it, and commit a
stage as one transaction guarded by compare-and-set on the run's `version`. Its public
read side (`get_run`, `list_runs`, `page_runs`, `read_events`, `close`) is the same on
every store, and `journal_version`/`wait_journal` tell a journal's reader when to read.
Its mailbox (`post_request`, `claim_requests`, `answer_request`, `get_request`,
`mailbox_version`) carries requests from any process to a daemon (core/mailbox.py).

Leases: a run that is "running" is owned by one process (a Registry) through `owner` and
`lease_until` (wall-clock seconds) on its record. The owner extends the lease with
`renew_leases`; when a process dies its leases run out, and `claim_run` lets exactly one
other process take each such run over (see stageline.actors.registry, docs/supervision.md).
Lease writes never change a run's `version`: they do not conflict with stage commits.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .admission import Claim
from .checkpoint import checkpoint_from_bytes
from .errors import CheckpointCorrupt
from .events import Event
from .mailbox import Request
from .patch import public_state


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything a store keeps about one run (the runtime's view)."""

    run_id: str
    pipeline_id: str
    pipeline_version: int
    status: str
    state: dict[str, Any]
    stage: str | None
    version: int = 0
    checkpoint: bytes | None = None
    error: dict[str, Any] | None = None
    last_seq: int = 0
    stage_runs: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    owner: str | None = None
    """The process (a Registry's `owner` id) that drives the run while it is running."""
    lease_until: float | None = None
    """Wall-clock time (seconds) when the owner's lease runs out unless renewed."""
    wake_at: float | None = None
    """When a registry must act on the run (wall-clock seconds): a sleeping run wakes, a
    paused run with `Pause.expires_in` expires. None for every other run."""
    trace: str | None = None
    """The span context of the run's last segment, as W3C traceparent text, when
    OpenTelemetry traced it (`Store.set_trace`); commits keep it."""
    priority: int = 0
    """`prepare(..., priority=)`: a queued run with a higher one is admitted first."""

    def applied(self, commit: Commit, version: int) -> RunRecord:
        """This record as it is after `commit` was stored at `version`.

        The lease is the commit's when it takes one (`commit.owner` set), else kept.
        """
        taken = commit.owner is not None
        return RunRecord(
            run_id=self.run_id,
            pipeline_id=self.pipeline_id,
            pipeline_version=self.pipeline_version,
            status=commit.status,
            state=commit.state,
            stage=commit.stage,
            version=version,
            checkpoint=commit.checkpoint,
            error=commit.error,
            last_seq=commit.last_seq,
            stage_runs=commit.stage_runs,
            created_at=self.created_at,
            updated_at=commit.updated_at,
            owner=commit.owner if taken else self.owner,
            lease_until=commit.lease_until if taken else self.lease_until,
            wake_at=commit.wake_at,
            trace=self.trace,
            priority=self.priority,
        )

    def info(self) -> RunInfo:
        return RunInfo(
            run_id=self.run_id,
            pipeline_id=self.pipeline_id,
            status=self.status,
            state=public_state(self.state),
            checkpoint=_lenient_checkpoint(self.checkpoint, self.run_id),
            stage=self.stage,
            updated_at=_dt.datetime.fromtimestamp(self.updated_at, _dt.UTC),
            error=self.error,
            pipeline_version=self.pipeline_version,
            owner=self.owner,
            lease_until=(
                None
                if self.lease_until is None
                else _dt.datetime.fromtimestamp(self.lease_until, _dt.UTC)
            ),
            created_at=_dt.datetime.fromtimestamp(self.created_at, _dt.UTC),
            wake_at=None
            if self.wake_at is None
            else _dt.datetime.fromtimestamp(self.wake_at, _dt.UTC),
            priority=self.priority,
        )


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What `store.get_run` and `store.list_runs` return."""

    run_id: str
    pipeline_id: str
    status: str
    state: dict[str, Any]
    checkpoint: Any
    stage: str | None
    updated_at: _dt.datetime
    error: dict[str, Any] | None = None
    """When failed: the error's record. A restarted run's also has `attempts`: every
    attempt's error record, oldest first (the last one is this error)."""
    pipeline_version: int = 1
    owner: str | None = None
    lease_until: _dt.datetime | None = None
    created_at: _dt.datetime | None = None
    """When the run was prepared (None for a row too damaged to tell)."""
    wake_at: _dt.datetime | None = None
    """When a sleeping run wakes, or a paused run's `Pause.expires_in` runs out (an aware
    UTC datetime); None for every other run."""
    priority: int = 0
    """The run's `prepare(..., priority=)`: queued runs with a higher one go first."""


@dataclass(frozen=True, slots=True)
class Commit:
    """One atomic write to a run: new state, status, position, checkpoint and events.

    Applied only if the run's stored version equals `expected_version`; the stored
    version then becomes `expected_version + 1`. `patch` is the merged patch that led
    to `state` (stores may keep it; the journal keeps it in the events' results).
    When `owner` is set the commit also takes the run's lease (`owner`, `lease_until`);
    when it is None the stored lease is left as it is.
    """

    run_id: str
    expected_version: int
    status: str
    stage: str | None
    state: dict[str, Any]
    last_seq: int
    stage_runs: int
    updated_at: float
    events: tuple[Event, ...] = ()
    checkpoint: bytes | None = None
    error: dict[str, Any] | None = None
    patch: dict[str, Any] | None = field(default=None, compare=False)
    owner: str | None = None
    lease_until: float | None = None
    wake_at: float | None = None
    """Written as given by every commit: set by a sleep (or a pause with `expires_in`),
    cleared (None) by every other."""


@dataclass(frozen=True, slots=True)
class Waking:
    """A run a registry must act on at `wake_at` (what `Store.list_waking` returns)."""

    run_id: str
    pipeline_id: str
    status: str
    wake_at: float


@runtime_checkable
class Store(Protocol):
    """A durable home for runs. Implementations live in stageline.stores."""

    def create_run(self, record: RunRecord) -> None:
        """Insert a new run; raise RunExistsError if its run_id is taken."""

    def load_run(self, run_id: str) -> RunRecord:
        """The run as last committed; raise RunNotFound if absent."""
        ...

    def commit(self, commit: Commit) -> int:
        """Apply one commit atomically; raise ConflictError on a version mismatch."""
        ...

    def set_checkpoint(
        self,
        run_id: str,
        checkpoint: bytes | None,
        *,
        only_if_paused: bool = True,
        expected_version: int | None = None,
    ) -> bool:
        """Replace a run's checkpoint bytes without a version change.

        Returns False (writing nothing) if `only_if_paused` and the run is not paused, or
        if `expected_version` is given and the run is at another version.
        """
        ...

    def get_run(self, run_id: str) -> RunInfo:
        """The public view of a run; raise RunNotFound if absent."""
        ...

    def list_runs(self, status: str | None = None, pipeline_id: str | None = None) -> list[RunInfo]:
        """Runs filtered by status and/or pipeline, oldest first.

        Decoded run by run: a row that cannot be decoded is listed with status
        `lifecycle.CORRUPT` (its error says what is damaged), never raised for the batch.
        """
        ...

    def page_runs(
        self,
        status: str | None = None,
        pipeline_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> tuple[list[RunInfo], str | None]:
        """Runs newest first (by created_at, then run_id, both descending), at most `limit`;
        and the cursor of the next page (None when this page is the last).

        `before` is a cursor returned by an earlier call: the page starts right after it.
        A cursor is opaque text; one this store did not give is ValueError, as is a
        `limit` outside 1..1000. Filters combine as in `list_runs`, and a damaged row is
        listed with status `lifecycle.CORRUPT` as there. Keyset pagination: any page costs
        what the first does.
        """
        ...

    def read_events(self, run_id: str, after_seq: int = 0) -> list[Event]:
        """The run's journal after `after_seq`, in seq order."""
        ...

    def journal_version(self) -> int:
        """A number that changes whenever any run's journal may have grown (cheap; may
        change for other writes too). Compare two readings; never decreases within one
        store object. A commit by this object moves it before `commit` returns."""
        ...

    def wait_journal(self, seen: int, timeout: float) -> int:
        """Block until `journal_version()` != `seen` or `timeout` seconds pass; return
        `journal_version()`. (SQLite polls every 10 ms; PostgreSQL waits on a NOTIFY.)"""
        ...

    def post_request(self, request: Request) -> None:
        """Add `request` (status "pending") to the mailbox; StoreError if its id is taken."""

    def claim_requests(self, claimer: str, limit: int = 16) -> list[Request]:
        """Claim up to `limit` pending requests for `claimer`, oldest first, and return them.

        Each request goes pending -> claimed in one conditional write, so of any number of
        racing claimers (threads, processes, machines) exactly one gets it.
        """
        ...

    def answer_request(self, request_id: str, error: str | None = None) -> None:
        """Record a claimed request's outcome: "done" (no error) or "failed" with `error`.

        StoreError if the request is not in the mailbox.
        """

    def get_request(self, request_id: str) -> Request:
        """The request as stored now (senders poll it for the answer); StoreError if absent."""
        ...

    def prune_requests(self, answered_before: float) -> int:
        """Delete the requests answered ("done" or "failed") before `answered_before`, a
        wall-clock time; return how many. Pending and claimed requests are never touched.
        """
        ...

    def mailbox_version(self) -> int:
        """A cheap number that changes whenever a request is posted or answered.

        It may change for other writes too (e.g. SQLite's `data_version` moves on any
        commit by another connection). A daemon polls it and claims only when it moved.
        """
        ...

    def claim_run(self, run_id: str, owner: str, lease_until: float, *, now: float) -> bool:
        """Take over a running run whose owner is gone: the recovery compare-and-set.

        In one conditional write, sets the run's `owner` and `lease_until` (not its
        version) only if it is "running" or "pending" and has no owner, is already owned
        by `owner`, or its lease ended at or before `now`. Returns whether it wrote: of many callers
        racing for one run, exactly one gets True. RunNotFound if absent.
        """
        ...

    def renew_leases(self, owner: str, run_ids: Sequence[str], lease_until: float) -> list[str]:
        """Set `lease_until` on those of `run_ids` that `owner` still owns, in one transaction.

        No version change. Returns the ids renewed (a run taken over by another process
        is left out). A `lease_until` in the past releases the runs: anyone may claim them.
        """
        ...

    def request_abort(self, run_id: str, reason: str | None) -> bool:
        """Set the durable abort flag of a pending or running run, whoever owns it.

        The owner sees it at its next lease renewal (PostgreSQL also NOTIFYs the mailbox
        channel) and aborts the run; a recovery of the run aborts it instead of resuming
        it. The flag is cleared by the commit that ends the run. False (nothing written)
        when the run is not pending or running. RunNotFound if absent.
        """
        ...

    def abort_requests(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """Of `run_ids`, those whose abort flag is set: run_id -> the reason given."""
        ...

    def delete_finished(
        self, updated_before: float, statuses: Collection[str], limit: int = 1000
    ) -> int:
        """Delete at most `limit` runs whose status is in `statuses` (finished statuses
        only: succeeded, failed, aborted, expired) and last updated before
        `updated_before` (wall-clock seconds), with their journals, in one transaction;
        return how many. Paused, sleeping, running, pending, queued and quarantined runs
        are never deleted. ValueError if `statuses` names any other status.
        """
        ...

    def reclaim_space(self) -> None:
        """Give the space of deleted rows back (SQLite: incremental vacuum; PostgreSQL:
        nothing to do, autovacuum reuses it)."""

    def close(self) -> None:
        """Release connections and files; the store cannot be used afterwards."""

    def list_waking(
        self, pipeline_id: str | None = None, until: float | None = None, limit: int = 100_000
    ) -> list[Waking]:
        """Sleeping runs, and paused runs with an expiry, whose `wake_at` is at or before
        `until` (None: any), soonest first, at most `limit`. Reads only those columns: a
        registry arms a timer for each (SPEC section 15)."""
        ...

    def list_requests(self, status: str | None = None, limit: int = 100) -> list[Request]:
        """The mailbox's requests, newest first, at most `limit`.

        `status`: "pending", "claimed", "answered" (done or failed), "done" or "failed";
        None lists all. ValueError for another word. A request that cannot be read is
        logged and left out.
        """
        ...

    def cancel_request(self, request_id: str, answer: str = "cancelled by an operator") -> bool:
        """Answer a still-pending request "failed" with `answer`, in one conditional write
        (no daemon will act on it). False, writing nothing, if it is claimed or answered
        already; StoreError if it is not in the mailbox.
        """
        ...

    def record_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        """Write, or replace, the heartbeat of the daemon `heartbeat["owner"]`.

        Its fields: `owner` (the daemon registry's owner id), `pid`, `host`, `started_at`
        and `beat_at` (wall-clock seconds), `runs` (how many runs it holds) and `lease_ttl`
        (its registry's lease, in seconds: a live daemon beats at least every third of it).
        """

    def remove_heartbeat(self, owner: str) -> None:
        """Delete `owner`'s heartbeat (its daemon stopped cleanly); nothing if absent."""

    def list_heartbeats(self) -> list[dict[str, Any]]:
        """The last heartbeat of every daemon that wrote one and did not remove it, by owner."""
        ...

    def save_schedule(self, entry: Mapping[str, Any]) -> None:
        """Write, or replace, the definition of the schedule `entry["schedule_id"]`.

        Its fields: `schedule_id`, `pipeline_id`, `spec` ("cron 0 9 * * 1-5", "every
        60s"), `overlap`, `catchup_window` (seconds) and, optionally, `next_fire`
        (wall-clock seconds). `updated_at` is the store's clock. Its `last_fire` and
        `last_run_id` are kept: saving never moves a firing back (SPEC section 15).
        """

    def mark_fired(
        self, schedule_id: str, fire_time: float, run_id: str | None, next_fire: float | None
    ) -> bool:
        """Record that the schedule fired at `fire_time` (wall-clock seconds), in one
        conditional write: only if that moves its `last_fire` forward (absent or older).
        `run_id`: the run it started (None: none, e.g. skipped; the last run id is then
        kept). Returns whether it moved `last_fire`; False for a schedule never saved."""
        ...

    def list_schedules(self) -> list[dict[str, Any]]:
        """Every saved schedule, by id: `schedule_id`, `pipeline_id`, `spec`, `overlap`,
        `catchup_window`, `last_fire`, `last_run_id`, `next_fire`, `updated_at`."""
        ...

    def set_trace(self, run_id: str, trace: str) -> None:
        """Keep the span context of the run's current segment (W3C traceparent text), so
        the next segment, in any process, links to it (SPEC section 18). No version
        change; RunNotFound if the run is absent."""

    def admit(self, commit: Commit, claims: Sequence[Claim], now: float) -> bool:
        """Apply `commit` (a run going on to "running") only if each of `claims` admits
        it at `now`, all in one transaction; whether it did (False: nothing written).

        A claim admits when fewer than its `max_running` other runs hold a slot of its
        (limit, key) (holding: running, with a lease not run out at `now`), when no
        queued run is ahead of this one for it (higher priority, or as high and older),
        and, with a `rate=(n, seconds)`, when fewer than `n` runs were admitted to it in
        the `seconds` before `now`. Admitted, the run holds a slot of each claim until it
        leaves "running" or its lease runs out (SPEC section 20). ConflictError as
        `commit` on a version mismatch.
        """
        ...

    def queue(self, commit: Commit, claims: Sequence[Claim]) -> None:
        """Apply `commit` (the run goes "queued") and record its `claims`, so that it
        counts as waiting for them (`admit`'s order, `limit_usage`), in one transaction."""

    def limit_usage(self, now: float) -> list[dict[str, Any]]:
        """Each (limit, key) with runs holding or waiting for it: `limit`, `key`,
        `running` (slots held at `now`) and `queued` (runs waiting), by limit then key."""
        ...


RunStore = Store
"""What a `store_factory(run_id)` returns: a Store that holds (at least) that run."""


def _lenient_checkpoint(data: bytes | None, run_id: str) -> Any:
    """The decoded checkpoint for display; None when absent or unreadable."""
    if data is None:
        return None
    try:
        return checkpoint_from_bytes(data, run_id)
    except CheckpointCorrupt:
        return None
