"""Starting a stage's child pipelines as child actors, and hearing when each one ends.

Shared by a root run and a child pipeline whose stage has children of its own. Which
children start, and where, is decided from the positions stored in the run's state
(core/children.py): a child that succeeded is skipped, a paused one stays paused.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stageline.core import children as kids
from stageline.core.events import PathNode
from stageline.core.results import ChildResult

from .messages import Begin, ChildEnded, ChildScope
from .stage_runner import Place, StageRun

_tokens = itertools.count(1)  # next() on a count is atomic: child tokens from any thread


@dataclass(frozen=True, slots=True)
class ChildStart:
    """One child pipeline to start: who it is, where it enters, and its stage count."""

    scope: ChildScope
    entry: str
    stage_runs: int
    resumed: bool


@dataclass(frozen=True, slots=True)
class ChildLink:
    """How a child actor reaches its run: the root (the run's one writer) and its parent."""

    root: Any
    parent: Any
    stage_run: int
    """The parent's stage execution the child belongs to."""


def plan_children(place: Place, run: StageRun, state: dict[str, Any]) -> list[ChildStart]:
    """The children of `run`'s stage to start; settled ones go straight into `run.children`.

    Raises StagelineError (CheckpointMismatch) when a stored position does not fit.
    """
    stage = run.stage
    run.children = {}
    prefix = (*place.prefix, PathNode(place.pipeline.id, stage.id))
    starts = []
    for child in stage.pipelines:
        key = kids.child_key(place.key, stage.id, child.id)
        position = kids.position_of(state, key)
        settled = kids.settled(position)
        if settled is not None:
            run.children[child.id] = settled
            continue
        entry = kids.entry_of(child, position, key)
        run.children[child.id] = None
        scope = ChildScope(child, key, prefix, next(_tokens))
        runs = 0 if position is None else position.stage_runs
        starts.append(ChildStart(scope, entry, runs, position is not None))
    return starts


def launch_children(
    run: StageRun,
    starts: list[ChildStart],
    announce: Callable[[ChildScope], None],
    start_actor: Callable[[ChildStart], Any],
) -> None:
    """Start each child actor, announced first so the root knows it before it speaks."""
    for start in starts:
        announce(start.scope)
        ref = start_actor(start)
        run.child_refs[start.scope.pipeline.id] = ref
        ref.tell(Begin(start.entry, resumed=start.resumed))


def child_ended(run: StageRun | None, message: ChildEnded) -> bool:
    """Record a child's end in `run`; True when every child of the stage has ended."""
    if run is None or run.children is None or run.number != message.stage_run:
        return False  # the stage stopped (abort, timeout) before this child ended
    run.child_refs.pop(message.child_id, None)
    if message.status == "drained":
        run.drained = True
    run.children[message.child_id] = ChildResult(message.status, message.error)
    return all(result is not None for result in run.children.values())


class LiveChildren:
    """The children (any depth) whose requests a root run accepts: path key -> token.

    A child's token changes each time it is started, so a stale child (of a stage that
    stopped, or a previous start) is never heard.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, int] = {}

    def add(self, key: str, token: int) -> None:
        self.tokens[key] = token

    def announce(self, scope: ChildScope) -> None:
        """A child is about to start (before it can say anything)."""
        self.add(scope.key, scope.token)

    def accepts(self, key: str, token: int) -> bool:
        return self.tokens.get(key) == token

    def remove(self, key: str) -> None:
        del self.tokens[key]

    def forget(self, key: str, stage_id: str) -> None:
        """Stop hearing from the children of a concluded or stopped stage (any depth)."""
        prefix = f"{key}/{stage_id}/"
        for child_key in [k for k in self.tokens if k.startswith(prefix)]:
            del self.tokens[child_key]
