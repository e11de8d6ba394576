"""What each planned action does to the fleet and the store, and the ledger of it all.

Requests go in through the store's mailbox API (`Request` + `store.post_request`, as
`stageline start/resume/retry/abort --no-wait` posts them), poison and damage through
raw SQL, and some aborts through `stageline abort` processes. The ledger remembers every
run the script asked for (with the state it was started with), every request it posted,
and every run it damaged.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stageline.core.errors import StagelineError
from stageline.core.mailbox import Request

from .fleet import Fleet, Proc
from .plan import Action, pick
from .target import DATABASE_ERRORS, Raw, Target

ACTIVE = ("pending", "running")
EXPECT_FAILED = ("poison", "unknown")
"""Request categories that must be answered "failed"."""


@dataclass
class Ledger:
    """What the script did, to judge the outcome by."""

    tag: str
    starts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """run_id -> the state its start request gave."""
    requests: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """request_id -> (kind, run_id, category)."""
    damaged: set[str] = field(default_factory=set)
    twins: list[tuple[str, str]] = field(default_factory=list)
    """Two requests posted back to back for one run (start, or resume of a run that will
    not pause again): at most one may be answered "done"."""
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    """The driver's own failures (a post the store refused, say), reported as they are."""

    def request_id(self) -> str:
        self.counts["request_ids"] += 1
        return f"{self.tag}-q{self.counts['request_ids']:06d}"

    def run_id(self, pipeline_id: str) -> str:
        self.counts["run_ids"] += 1
        return f"r{self.counts['run_ids']:05d}-{pipeline_id}"


@dataclass
class Chaos:
    """Carries out the plan's actions, and keeps `count` daemons running (>= `floor`)."""

    target: Target
    fleet: Fleet
    store: Any
    raw: Raw
    ledger: Ledger
    count: int
    floor: int
    cli_threads: list[threading.Thread] = field(default_factory=list)
    cli_results: list[tuple[str, str | None]] = field(default_factory=list)
    """(run_id, request_id or None) of each `stageline abort` process that ended."""

    def do(self, action: Action) -> None:
        try:
            getattr(self, f"_{action.kind}")(action)
        except (StagelineError, *DATABASE_ERRORS) as exc:
            self.ledger.errors.append(f"{action.kind} at {action.at:.2f}s: {exc}")

    def post(self, kind: str, run_id: str, category: str, **fields: Any) -> str:
        request_id = self.ledger.request_id()
        self.store.post_request(Request(request_id, kind, run_id, time.time(), **fields))
        self.ledger.requests[request_id] = (kind, run_id, category)
        self.ledger.counts[f"posted_{category}"] += 1
        return request_id

    def runs(self) -> dict[str, tuple[str, str]]:
        """run_id -> (pipeline_id, status) as the store lists them (damaged: "corrupt")."""
        return {i.run_id: (i.pipeline_id, i.status) for i in self.store.list_runs()}

    def candidates(self, statuses: tuple[str, ...], pipeline: str | None = None) -> list[str]:
        return [
            run_id
            for run_id, (pipeline_id, status) in self.runs().items()
            if status in statuses and pipeline in (None, pipeline_id)
            and run_id not in self.ledger.damaged
        ]  # fmt: skip

    # --- runs ---------------------------------------------------------------------------

    def start_run(self, pipeline_id: str, state: dict[str, Any], twice: bool = False) -> str:
        run_id = self.ledger.run_id(pipeline_id)
        self.ledger.starts[run_id] = state
        posted = [
            self.post("start", run_id, "start", pipeline_id=pipeline_id, args={"state": state})
            for _ in range(2 if twice else 1)  # a start posted twice makes one run
        ]
        self.twin(posted)
        return run_id

    def twin(self, posted: list[str]) -> None:
        if len(posted) == 2:
            self.ledger.twins.append((posted[0], posted[1]))

    def _start(self, a: Action) -> None:
        if a.u < 0.3:
            self.start_run("short", {})
        elif a.u < 0.55:
            self.start_run("approval", {})
        elif a.u < 0.75:
            self.start_run("flaky", {"fails": 1 + int(a.v * 2)})
        else:
            self.start_run("slow", {"slow": round(0.5 + 2.5 * a.v, 2)}, twice=a.v > 0.9)

    def _crash_loop(self, a: Action) -> None:
        self.start_run("crashy", {})

    def _resume(self, a: Action) -> None:
        run_id = pick(self.candidates(("paused",), "approval"), a.u)
        if run_id is not None:  # sometimes with a rival: at most one wins
            self.twin([self.post("resume", run_id, "resume", args={"patch": {"by": who}})
                       for who in ("chaos", "rival")[: 2 if a.v < 0.2 else 1]])  # fmt: skip

    def _retry(self, a: Action) -> None:
        run_id = pick(self.candidates(("failed",)), a.u)
        if run_id is not None:  # sometimes twice: both may win if the first retry failed again
            for _ in range(2 if a.v < 0.15 else 1):
                self.post("retry", run_id, "retry")

    # --- daemons and connections ----------------------------------------------------

    def _kill(self, a: Action) -> None:
        live = self.fleet.live()
        if len(live) - 1 < self.floor:  # start the replacement first, to keep the floor
            self.fleet.wait_ready([self.fleet.start()])
            live = self.fleet.live()
        name = pick([p.name for p in live], a.u)
        victim = next(p for p in live if p.name == name)
        self.fleet.kill(victim)
        if a.v < 0.4:  # and a row of a run it left running is damaged (a disk fault)
            self.damage(pick(self.owned_by(victim.pid), a.u), a.v)
        self.fleet.keep(self.count)

    def owned_by(self, pid: int) -> list[str]:
        """The running runs (not damaged, not crash-looping) whose lease `pid` holds."""
        return [
            i.run_id
            for i in self.store.list_runs("running")
            if f":{pid}:" in str(i.owner) and self.damageable(i.run_id)
        ]

    def _terminate(self, a: Action) -> None:
        live = sorted(p.name for p in self.fleet.live())
        names = live if a.v < 0.3 else [pick(live, a.u) or ""]
        done = self.raw.terminate([self.target.application_name(n) for n in names])
        self.ledger.counts["backends_terminated"] += done

    def keep_daemons(self) -> list[Proc]:
        return self.fleet.keep(self.count)

    # --- damage and poison --------------------------------------------------------------

    def damageable(self, run_id: str) -> bool:
        """Not damaged yet, and not the crash-looping run (it is there to be quarantined)."""
        return run_id not in self.ledger.damaged and not run_id.endswith("-crashy")

    def _damage(self, a: Action) -> None:
        found = self.candidates(("running", "paused")) or self.candidates(
            ("succeeded", "failed", "aborted")
        )
        self.damage(pick([r for r in found if self.damageable(r)], a.u), a.v)

    def damage(self, run_id: str | None, draw: float) -> None:
        """Overwrite the run's state with garbage bytes (seeded by `draw`)."""
        if run_id is None:
            return
        rng = random.Random(draw)
        garbage = b"\xff" + bytes(rng.randrange(256) for _ in range(15))  # 0xff: no CBOR item
        if self.raw.damage(run_id, garbage):
            self.ledger.damaged.add(run_id)

    def _poison(self, a: Action) -> None:
        request_id = self.ledger.request_id()
        run_id = f"poison-{len(self.ledger.requests)}"
        kind, args = "start", b"\xff\x00not cbor"
        if a.v >= 0.5:
            args = b"\x82\x01\x02" if a.v < 0.8 else b"\xa0"  # a CBOR list, not a map
            kind = "start" if a.v < 0.8 else "explode"  # or a kind no daemon knows
        self.raw.poison(request_id, kind, run_id, args, time.time())
        self.ledger.requests[request_id] = (kind, run_id, "poison")
        self.ledger.counts["posted_poison"] += 1

    def _unknown(self, a: Action) -> None:
        ghost = f"ghost-{len(self.ledger.requests)}"
        kind = ("resume", "abort", "retry", "start")[min(int(a.v * 4), 3)]
        fields: dict[str, Any] = {"pipeline_id": "nope"} if kind == "start" else {}
        self.post(kind, ghost, "unknown", **fields)

    # --- abort storms -----------------------------------------------------------------

    def _abort_storm(self, a: Action) -> None:
        found = self.candidates(("pending", "running", "paused"))
        targets = [r for r in found if not r.endswith("-crashy")]  # that one is quarantined
        chosen = random.Random(a.u).sample(sorted(targets), min(4 + int(a.v * 6), len(targets)))
        if chosen and a.v < 0.6:  # one through the CLI, the others through the mailbox
            self.cli_abort(chosen.pop())
        for n, run_id in enumerate(chosen):
            for _ in range(2 if n % 3 == 0 else 1):  # some twice
                self.post("abort", run_id, "abort", args={"reason": "chaos storm"})

    def cli_abort(self, run_id: str) -> None:
        """`stageline abort RUN --json` in a process of its own (on a thread: it waits)."""
        command = [sys.executable, "-m", "stageline", "abort", run_id, "--json", "--timeout", "5",
                   "--store", self.target.url_for("cli")]  # fmt: skip
        thread = threading.Thread(target=self._run_cli, args=(command, run_id), daemon=True)
        thread.start()
        self.cli_threads.append(thread)

    def _run_cli(self, command: list[str], run_id: str) -> None:
        result = subprocess.run(command, cwd=self.fleet.folder, env=self.fleet.env(),
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        try:
            request_id = json.loads(result.stdout.splitlines()[0])["request_id"]
        except (ValueError, IndexError, KeyError, TypeError):
            request_id = None  # refused before posting (the run was no longer abortable)
        self.cli_results.append((run_id, request_id))  # one append: safe across threads

    def join_cli(self) -> None:
        """Wait for the `stageline abort` processes; enter the requests they posted."""
        for thread in self.cli_threads:
            thread.join(timeout=90)
        for run_id, request_id in self.cli_results:
            self.ledger.counts["cli_aborts"] += 1
            if request_id is not None:
                self.ledger.requests[request_id] = ("abort", run_id, "cli")
                self.ledger.counts["posted_cli"] += 1
