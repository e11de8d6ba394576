"""After the chaos: let every run end or pause, then stop the daemons with SIGTERM.

No more kills, terminations, damage or new runs. The daemons are brought back to their
number; every paused run is resumed (or, one in four by its id, aborted), again if a
resume lost a race, until no run is pending or running and no request is pending, or
the time is up. A damaged row that reads "corrupt" is waited for only while its owner's
lease lives: the owner's next commit writes the whole state again, and heals it.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

from stageline.core.errors import StagelineError

from .actions import ACTIVE, Chaos
from .target import Answer

WAITING = (*ACTIVE, "queued", "sleeping")


@dataclass
class Settled:
    """How the settling went: `left` are the runs still going when the time was up."""

    seconds: float = 0.0
    left: list[str] = field(default_factory=list)
    pending_requests: int = 0
    stop_codes: dict[str, int | None] = field(default_factory=dict)


def settle(chaos: Chaos, limit: float) -> Settled:
    began = time.monotonic()
    chaos.fleet.wait_ready(chaos.keep_daemons() + chaos.fleet.live())
    chaos.join_cli()
    posted: dict[str, str] = {}  # run_id -> the settling request posted for it
    outcome = Settled()
    while True:
        chaos.keep_daemons()
        try:
            outcome.left, outcome.pending_requests = _round(chaos, posted)
        except StagelineError as exc:
            chaos.ledger.errors.append(f"settling: {exc}")
        done = not outcome.left and not outcome.pending_requests
        if done or time.monotonic() - began > limit:
            break
        time.sleep(0.2)
    outcome.seconds = time.monotonic() - began
    return outcome


def _round(chaos: Chaos, posted: dict[str, str]) -> tuple[list[str], int]:
    """One look: post what the paused runs need; the runs still going, pending requests."""
    runs = chaos.runs()
    answers = chaos.raw.answers()
    for run_id, (_, status) in sorted(runs.items()):
        if status != "paused":  # ("paused": it reads back whole)
            continue
        earlier = answers.get(posted.get(run_id, ""))
        if run_id in posted and (earlier is None or _on_its_way(chaos, earlier)):
            continue
        posted[run_id] = _unpause(chaos, run_id)
    left = [r for r, (_, s) in runs.items() if s in WAITING or (s == "paused" and r in posted)]
    corrupt = {r for r, (_, s) in runs.items() if s == "corrupt"}
    left += chaos.raw.driven(corrupt, time.time())  # its owner may yet commit over the damage
    waiting = [a for a in answers.values() if a.status == "pending"]
    return left, len(waiting)


def _on_its_way(chaos: Chaos, request: Answer) -> bool:
    """Pending, or claimed by a daemon that still lives (and will answer it)."""
    if request.status == "claimed":
        return not chaos.fleet.died(request.claimed_by)
    return request.status == "pending"


def _unpause(chaos: Chaos, run_id: str) -> str:
    if zlib.crc32(run_id.encode()) % 4 == 0:
        return chaos.post("abort", run_id, "settle", args={"reason": "settling"})
    return chaos.post("resume", run_id, "settle", args={"patch": {"by": "settle"}})


def stop(chaos: Chaos, outcome: Settled) -> None:
    """SIGTERM every daemon; each must exit 0."""
    chaos.fleet.stop_all()
    for proc in chaos.fleet.procs:
        if proc.ended == "stopped":
            outcome.stop_codes[proc.name] = proc.exit_code
