"""The seeded schedule of chaos: which action, when, and the draws that pick its target.

Each kind of action is a Poisson stream with its own generator (seeded with the run's
seed and the kind), plus a few fixed ones so even a short run has every kind. The same
seed and settings give the same plan, to the action; its digest is printed. What an
action hits (which run is paused at that moment) depends on the runs' timing: the draws
pick among the candidates of that moment, sorted by id.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

# kind: actions per second while the chaos lasts
RATES = {
    "start": 4.0,
    "resume": 1.5,
    "retry": 0.6,
    "kill": 0.15,
    "terminate": 0.3,
    "damage": 0.1,
    "poison": 0.2,
    "unknown": 0.3,
    "abort_storm": 0.1,
}
# kind: when (a fraction of the chaos's length) one action of it happens in any case
FIXED = {
    "start": (0.0, 0.01, 0.02, 0.03),
    "poison": (0.2,),
    "unknown": (0.25,),
    "kill": (0.3,),
    "damage": (0.35,),
    "abort_storm": (0.45,),
    "terminate": (0.55,),
}
POSTGRES_ONLY = {"terminate"}


@dataclass(frozen=True, slots=True)
class Action:
    """One planned action: `at` seconds after the chaos began; `u`, `v` its own draws."""

    at: float
    kind: str
    u: float
    v: float


def make_plan(seed: int, seconds: float, postgres: bool, crash_loops: int) -> list[Action]:
    """Every action of the chaos, in time order."""
    actions: list[Action] = []
    for kind, rate in RATES.items():
        if kind in POSTGRES_ONLY and not postgres:
            continue
        actions += _stream(random.Random(f"{seed}:{kind}"), kind, rate, seconds)
    actions += _crash_loops(random.Random(f"{seed}:crash_loop"), seconds, crash_loops)
    return sorted(actions, key=lambda a: (a.at, a.kind))


def _stream(rng: random.Random, kind: str, rate: float, seconds: float) -> list[Action]:
    actions = [Action(seconds * f, kind, rng.random(), rng.random()) for f in FIXED.get(kind, ())]
    at = rng.expovariate(rate)
    while at < seconds:
        actions.append(Action(at, kind, rng.random(), rng.random()))
        at += rng.expovariate(rate)
    return actions


def _crash_loops(rng: random.Random, seconds: float, count: int) -> list[Action]:
    """Starts of runs that kill their daemon, spread over the chaos's first half."""
    return [
        Action(seconds * (n + 1) / (2 * count + 2), "crash_loop", rng.random(), rng.random())
        for n in range(count)
    ]


def digest(plan: list[Action]) -> str:
    """A short fingerprint of the plan (equal seeds and settings: equal digests)."""
    text = "\n".join(f"{a.at:.6f} {a.kind} {a.u:.9f} {a.v:.9f}" for a in plan)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def pick(candidates: list[str], draw: float) -> str | None:
    """The candidate `draw` (in [0, 1)) points at, of the sorted candidates; None if none."""
    if not candidates:
        return None
    ordered = sorted(candidates)
    return ordered[min(int(draw * len(ordered)), len(ordered) - 1)]
