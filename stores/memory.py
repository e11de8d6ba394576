"""MemoryStore: runs kept in this process, for tests and throwaway runs."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from stageline.core import lifecycle
from stageline.core.admission import Claim
from stageline.core.clock import Clock, SystemClock
from stageline.core.events import Event, is_journaled
from stageline.core.mailbox import ANSWERED, PENDING, Request
from stageline.core.patch import copy_state
from stageline.core.store import Commit, RunInfo, RunRecord, Waking

from ._admission import Ledger
from ._common import (
    claimable,
    conflict,
    finished_statuses,
    request_exists,
    request_not_found,
    run_exists,
    run_not_found,
)
from ._fleet import CANCELLED, heartbeat_from_row, heartbeat_values, request_statuses
from ._pages import Page, checked_limit, cursor_position, page_of
from ._schedules import DEFINITION_FIELDS, SCHEDULE_FIELDS, definition_values


class MemoryStore:
    """A thread-safe in-memory Store. Committed states are never mutated, only replaced.

    `clock` (default: the system clock) dates the answers to mailbox requests.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = SystemClock() if clock is None else clock
        self._lock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._journal: dict[str, list[Event]] = {}
        self._requests: dict[str, Request] = {}  # insertion order is posting order
        self._aborts: dict[str, str | None] = {}  # run_id -> reason: the abort flags set
        self._mailbox_version = 0
        self._heartbeats: dict[str, dict[str, Any]] = {}  # owner -> the daemon's last heartbeat
        self._schedules: dict[str, dict[str, Any]] = {}  # schedule_id -> its row
        self._ledger = Ledger()  # admissions: claims, slots held, recent starts
        self._journal_version = 0  # bumped by every commit that carries events
        self._journal_grew = threading.Condition(self._lock)

    def create_run(self, record: RunRecord) -> None:
        with self._lock:
            if record.run_id in self._runs:
                raise run_exists(record.run_id)
            self._runs[record.run_id] = record
            self._journal[record.run_id] = []

    def load_run(self, run_id: str) -> RunRecord:
        with self._lock:
            try:
                return self._runs[run_id]
            except KeyError:
                raise run_not_found(run_id) from None

    def commit(self, commit: Commit) -> int:
        with self._lock:
            return self._apply(commit)

    def admit(self, commit: Commit, claims: Sequence[Claim], now: float) -> bool:
        with self._lock:
            current = self._runs.get(commit.run_id)
            if current is None or current.version != commit.expected_version:
                found = None if current is None else current.version
                raise conflict(commit.run_id, commit.expected_version, found)
            if not self._ledger.admits(self._runs, current, claims, now):
                return False
            self._apply(commit)
            self._ledger.admitted(commit.run_id, claims, now)
            return True

    def queue(self, commit: Commit, claims: Sequence[Claim]) -> None:
        with self._lock:
            self._apply(commit)
            self._ledger.queued(self._runs[commit.run_id], claims)

    def limit_usage(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            return self._ledger.usage(self._runs, now)

    def _apply(self, commit: Commit) -> int:
        """Apply `commit` (the lock held); ConflictError on a version mismatch."""
        current = self._runs.get(commit.run_id)
        if current is None or current.version != commit.expected_version:
            found = None if current is None else current.version
            raise conflict(commit.run_id, commit.expected_version, found)
        version = commit.expected_version + 1
        self._runs[commit.run_id] = current.applied(commit, version)
        if commit.status not in lifecycle.ACTIVE:
            self._aborts.pop(commit.run_id, None)  # the run ended: its flag with it
        if commit.status not in (lifecycle.RUNNING, lifecycle.QUEUED) and commit.events:
            self._ledger.forget(commit.run_id)  # it ends, pauses or sleeps: no slot held
        journal = self._journal[commit.run_id]
        for event in commit.events:
            if is_journaled(event.name):  # a copy, as a durable store keeps
                if event.results is not None:
                    event = replace(event, results=copy_state(event.results))
                journal.append(event)
        if commit.events:
            self._journal_version += 1
            self._journal_grew.notify_all()
        return int(version)

    def set_checkpoint(
        self,
        run_id: str,
        checkpoint: bytes | None,
        *,
        only_if_paused: bool = True,
        expected_version: int | None = None,
    ) -> bool:
        with self._lock:
            current = self._runs.get(run_id)
            if current is None:
                raise run_not_found(run_id)
            if only_if_paused and current.status != lifecycle.PAUSED:
                return False
            if expected_version is not None and current.version != expected_version:
                return False
            self._runs[run_id] = replace(current, checkpoint=checkpoint)
            return True

    def set_trace(self, run_id: str, trace: str) -> None:
        with self._lock:
            current = self._runs.get(run_id)
            if current is None:
                raise run_not_found(run_id)
            self._runs[run_id] = replace(current, trace=trace)

    def claim_run(self, run_id: str, owner: str, lease_until: float, *, now: float) -> bool:
        with self._lock:
            current = self._runs.get(run_id)
            if current is None:
                raise run_not_found(run_id)
            if not claimable(current, owner, now):
                return False
            self._runs[run_id] = replace(current, owner=owner, lease_until=lease_until)
            return True

    def renew_leases(self, owner: str, run_ids: Sequence[str], lease_until: float) -> list[str]:
        renewed = []
        with self._lock:
            for run_id in run_ids:
                current = self._runs.get(run_id)
                if current is not None and current.owner == owner:
                    self._runs[run_id] = replace(current, lease_until=lease_until)
                    renewed.append(run_id)
        return renewed

    def request_abort(self, run_id: str, reason: str | None) -> bool:
        with self._lock:
            current = self._runs.get(run_id)
            if current is None:
                raise run_not_found(run_id)
            if current.status not in lifecycle.ACTIVE:
                return False
            self._aborts[run_id] = reason
            return True

    def abort_requests(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        with self._lock:
            return {run_id: self._aborts[run_id] for run_id in run_ids if run_id in self._aborts}

    def delete_finished(
        self, updated_before: float, statuses: Collection[str], limit: int = 1000
    ) -> int:
        """Delete at most `limit` finished runs (of `statuses`) updated before
        `updated_before`, with their journals; see `Store.delete_finished`."""
        wanted = finished_statuses(statuses, limit)
        with self._lock:
            doomed = [
                run_id
                for run_id, r in self._runs.items()
                if r.status in wanted and r.updated_at < updated_before
            ][:limit]
            for run_id in doomed:
                del self._runs[run_id], self._journal[run_id]
                self._aborts.pop(run_id, None)
                self._ledger.forget(run_id)
            return len(doomed)

    def reclaim_space(self) -> None:
        """Nothing to do: deleted runs are gone from memory at once."""

    def get_run(self, run_id: str) -> RunInfo:
        return _detached(self.load_run(run_id))

    def list_runs(self, status: str | None = None, pipeline_id: str | None = None) -> list[RunInfo]:
        with self._lock:
            records = list(self._runs.values())
        return [
            _detached(r)
            for r in sorted(records, key=lambda r: (r.created_at, r.run_id))
            if (status is None or r.status == status)
            and (pipeline_id is None or r.pipeline_id == pipeline_id)
        ]

    def page_runs(
        self,
        status: str | None = None,
        pipeline_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> Page:
        """Runs newest first, at most `limit`, and the next page's cursor; see
        `Store.page_runs`."""
        size = checked_limit(limit)
        after = None if before is None else cursor_position(before)
        with self._lock:
            records = list(self._runs.values())
        chosen = heapq.nlargest(
            size + 1,
            (r for r in records if (status is None or r.status == status)
             and (pipeline_id is None or r.pipeline_id == pipeline_id)
             and (after is None or (r.created_at, r.run_id) < after)),
            key=lambda r: (r.created_at, r.run_id),
        )  # fmt: skip
        return page_of(chosen, size, lambda r: (r.created_at, r.run_id), _detached)

    def journal_version(self) -> int:
        """How many commits with events this store took: moves when a journal grows."""
        return self._journal_version

    def wait_journal(self, seen: int, timeout: float) -> int:
        with self._journal_grew:
            self._journal_grew.wait_for(lambda: self._journal_version != seen, max(timeout, 0.0))
            return self._journal_version

    def list_waking(
        self, pipeline_id: str | None = None, until: float | None = None, limit: int = 100_000
    ) -> list[Waking]:
        with self._lock:
            records = list(self._runs.values())
        due = sorted(
            (Waking(r.run_id, r.pipeline_id, r.status, r.wake_at) for r in records
             if r.wake_at is not None and r.status in lifecycle.WAITING
             and (pipeline_id is None or r.pipeline_id == pipeline_id)
             and (until is None or r.wake_at <= until)),
            key=lambda w: w.wake_at,
        )  # fmt: skip
        return due[:limit]

    def read_events(self, run_id: str, after_seq: int = 0) -> list[Event]:
        with self._lock:
            if run_id not in self._journal:
                raise run_not_found(run_id)
            events = sorted(
                (e for e in self._journal[run_id] if e.seq > after_seq), key=lambda e: e.seq
            )
        return [
            replace(e, state=None, checkpoint=None, results=copy_state(e.results)) for e in events
        ]

    def post_request(self, request: Request) -> None:
        with self._lock:
            if request.request_id in self._requests:
                raise request_exists(request.request_id)
            self._requests[request.request_id] = replace(request, status=PENDING)
            self._mailbox_version += 1

    def claim_requests(self, claimer: str, limit: int = 16) -> list[Request]:
        with self._lock:
            pending = [r for r in self._requests.values() if r.status == PENDING][:limit]
            claimed = [r.claimed(claimer) for r in pending]
            for request in claimed:
                self._requests[request.request_id] = request
            return claimed

    def answer_request(self, request_id: str, error: str | None = None) -> None:
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                raise request_not_found(request_id)
            self._requests[request_id] = request.answered_with(error, self.clock.wall())
            self._mailbox_version += 1

    def get_request(self, request_id: str) -> Request:
        with self._lock:
            try:
                return self._requests[request_id]
            except KeyError:
                raise request_not_found(request_id) from None

    def prune_requests(self, answered_before: float) -> int:
        with self._lock:
            old = [
                r.request_id
                for r in self._requests.values()
                if r.status in ANSWERED and (r.answered_at or 0.0) < answered_before
            ]
            for request_id in old:
                del self._requests[request_id]
            return len(old)

    def mailbox_version(self) -> int:
        return self._mailbox_version

    def list_requests(self, status: str | None = None, limit: int = 100) -> list[Request]:
        wanted = request_statuses(status)
        with self._lock:
            found = [r for r in reversed(self._requests.values()) if r.status in wanted]
        return found[: max(0, limit)]

    def cancel_request(self, request_id: str, answer: str = CANCELLED) -> bool:
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                raise request_not_found(request_id)
            if request.status != PENDING:
                return False
            self._requests[request_id] = request.answered_with(answer, self.clock.wall())
            self._mailbox_version += 1
            return True

    def record_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        row = heartbeat_from_row(heartbeat_values(heartbeat))
        with self._lock:
            self._heartbeats[row["owner"]] = row

    def remove_heartbeat(self, owner: str) -> None:
        with self._lock:
            self._heartbeats.pop(owner, None)

    def list_heartbeats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(self._heartbeats[owner]) for owner in sorted(self._heartbeats)]

    def save_schedule(self, entry: Mapping[str, Any]) -> None:
        *definition, next_fire = definition_values(entry)
        with self._lock:
            row = self._schedules.setdefault(definition[0], dict.fromkeys(SCHEDULE_FIELDS))
            row.update(zip(DEFINITION_FIELDS, definition, strict=True))
            row["next_fire"] = row["next_fire"] if next_fire is None else next_fire
            row["updated_at"] = float(self.clock.wall())

    def mark_fired(
        self, schedule_id: str, fire_time: float, run_id: str | None, next_fire: float | None
    ) -> bool:
        with self._lock:
            row = self._schedules.get(schedule_id)
            if row is None:
                return False
            if row["last_fire"] is not None and row["last_fire"] >= fire_time:
                if run_id is not None:  # a buffered fire time started late: the last run
                    row["last_run_id"], row["updated_at"] = run_id, float(self.clock.wall())
                return False
            row["last_fire"], row["next_fire"] = float(fire_time), next_fire
            row["last_run_id"] = row["last_run_id"] if run_id is None else run_id
            row["updated_at"] = float(self.clock.wall())
            return True

    def list_schedules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(self._schedules[key]) for key in sorted(self._schedules)]

    def close(self) -> None:
        """Nothing to release."""


def _detached(record: RunRecord) -> RunInfo:
    """A RunInfo whose state the caller may mutate without touching the store."""
    info = record.info()
    return replace(info, state=copy_state(info.state))
