"""What time-driven transitions leave in a run's state, and what a stage sees of it.

A run that continues at `Pause.on_expiry` because nobody resumed it in time carries
`state[PIPELINE_DATA_KEY]["expired"] == True` into that stage (its steps and router see
it); the stage's commit takes it away again, so later stages and later pauses do not
mistake an old expiry for theirs (SPEC section 15).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .patch import PIPELINE_DATA_KEY, State, public_state

EXPIRED: Final = "expired"


def with_expired(state: Mapping[str, Any]) -> State:
    """`state` marked as continuing after a pause expired."""
    data = dict(state.get(PIPELINE_DATA_KEY) or {})
    data[EXPIRED] = True
    return {**state, PIPELINE_DATA_KEY: data}


def without_expired(state: State) -> State:
    """`state` without the expiry mark (itself when unmarked: no copy)."""
    data = state.get(PIPELINE_DATA_KEY)
    if not isinstance(data, dict) or EXPIRED not in data:
        return state
    kept = {k: v for k, v in data.items() if k != EXPIRED}
    if kept:
        return {**state, PIPELINE_DATA_KEY: kept}
    return {k: v for k, v in state.items() if k != PIPELINE_DATA_KEY}


def visible_state(state: Mapping[str, Any]) -> State:
    """The state a stage's steps and router see: the user's, plus the expiry mark if set."""
    shown = public_state(state)
    data = state.get(PIPELINE_DATA_KEY)
    if isinstance(data, dict) and data.get(EXPIRED):
        shown[PIPELINE_DATA_KEY] = {EXPIRED: True}
    return shown
