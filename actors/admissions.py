"""Admission passes: the queued runs a registry holds, admitted as slots free.

Part of the registry's actor (it runs on the actor's thread only). A queued run (SPEC
section 20) is held by the registry that queued it, which renews its lease like a
running run's; if that registry dies, another one's `recover` adopts it. A pass tries
the held queued runs in queue order (highest priority, then oldest): each admission is
one `Store.admit` of `transitions.admit`, which the store grants only to the run first
in line for each of its limits, so the order holds across every registry on the store.
Each (limit, key) is a line: a pass tries its first runs until one is refused. A pass runs
when a run is queued here, when one of this registry's runs stops (a slot may have
freed), and every ADMISSION_INTERVAL seconds while runs wait (slots freed elsewhere,
leases run out, rate windows sliding).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import Any

from stageline.core import lifecycle
from stageline.core import transitions as tr
from stageline.core.admission import Claim
from stageline.core.errors import ConflictError, RunStateError, StagelineError, StoreError

from .admission import claims_for
from .handle import RunHandle
from .registry_messages import AdmitDue
from .supervisor import Supervisor

_log = logging.getLogger("stageline")

ADMISSION_INTERVAL = 0.05
"""Seconds between admission passes while this registry holds queued runs."""


class Admissions:
    """The registry's queued runs, in one line per (limit, key), and its passes.

    A queued run's claims are worked out once, when it is queued (its state does not
    change while it waits); a pass tries each line's first runs until one is refused,
    so its cost follows the number of lines, not the number of waiting runs.
    """

    def __init__(
        self, supervisor: Supervisor, tell: Callable[[Any], None], counts: dict[str, int]
    ) -> None:
        self.supervisor = supervisor
        self.tell = tell
        self.counts = counts
        self.live = supervisor.live
        self.armed = False
        self.waiting: dict[str, tuple[RunHandle, tuple[Claim, ...]]] = {}
        self.lines: dict[tuple[str, str], list[tuple[tuple[int, float, str], str]]] = {}

    def add(self, run: RunHandle) -> None:
        """Hold a queued run until a slot frees for it."""
        try:
            claims = claims_for(run.pipeline, run.record.state, run.run_id)
        except StagelineError as exc:  # its key function fails: it can never be admitted
            self._let_go(run, exc)
            return
        self.live[run.run_id] = run
        self.waiting[run.run_id] = (run, claims)
        record = run.record
        place = ((-record.priority, record.created_at, run.run_id), run.run_id)
        for claim in claims:
            heapq.heappush(self.lines.setdefault((claim.limit, claim.key), []), place)
        self.run_pass()

    def on_due(self) -> None:
        self.armed = False
        self.run_pass()

    def run_pass(self) -> None:
        try:
            for slot in list(self.lines):
                try:
                    self._serve_line(slot)
                except StoreError:  # the store may recover: the next pass tries again
                    _log.warning(
                        "stageline registry: admitting runs waiting for %r failed", slot,
                        exc_info=True,
                    )  # fmt: skip
        finally:
            self._arm()

    def _serve_line(self, slot: tuple[str, str]) -> None:
        """Admit the runs first in this line until one is refused (or none is left)."""
        line = self.lines[slot]
        while line and not self.supervisor.stopped:
            run_id = line[0][1]
            entry = self.waiting.get(run_id)
            if entry is None or entry[0].status != lifecycle.QUEUED:
                heapq.heappop(line)  # admitted through another line, or gone
                self.waiting.pop(run_id, None)
                continue
            if not self._admit(*entry):
                return
        if not line:
            del self.lines[slot]

    def _admit(self, run: RunHandle, claims: tuple[Claim, ...]) -> bool:
        """Try one run; False when it has to wait on (its limits refused it)."""
        flagged = run.store.abort_requests([run.run_id])
        if run.run_id in flagged:  # aborted by another process while it waited
            self.waiting.pop(run.run_id, None)
            run.abort_running(flagged[run.run_id])
            return True
        now = self.supervisor.config.clock.wall()
        commit = tr.admit(run.record, now, self.supervisor.lease())
        try:
            admitted = run.store.admit(commit, claims, now)
        except ConflictError:
            self._let_go(run, None)
            return True
        if not admitted:
            return False
        self.waiting.pop(run.run_id, None)
        self.counts["admitted"] += 1
        run.restart(run.record.applied(commit, commit.expected_version + 1))
        return True

    def _let_go(self, run: RunHandle, error: StagelineError | None) -> None:
        """Stop holding a queued run that cannot be admitted here: its key function fails
        (`error`), or another process moved it on (aborted it, or adopted it)."""
        self.live.pop(run.run_id, None)
        self.waiting.pop(run.run_id, None)
        if error is None:
            error = RunStateError(
                f"run {run.run_id!r} was moved on by another process while queued here; "
                "follow it with `stageline logs --follow` or prepare(run_id=..., "
                "if_exists='attach')"
            )
        _log.warning("stageline registry: queued run %r let go: %s", run.run_id, error)
        run.give_up(error)

    def _arm(self) -> None:
        if self.armed or self.supervisor.stopped or not self.waiting:
            return
        self.armed = True
        due = AdmitDue()
        self.supervisor.timers.schedule(ADMISSION_INTERVAL, lambda: self.tell(due))
