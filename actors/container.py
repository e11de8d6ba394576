"""ContainerActor: one per run, the only way to the run's artifacts, one access at a time.

The artifacts themselves are a plain dict owned by the run's `Container`, so they outlive
the actor: the actor is started on first use in a segment of the run and stopped when
the run pauses or ends (a paused run holds no thread), then started again on resume.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka

from stageline.core.checkpoint import Artifacts, encode_bundle
from stageline.core.codec import DEFAULT_MAX_BYTES
from stageline.core.errors import ArtifactError
from stageline.core.patch import copy_state, describe, find_unstorable

from .base import StagelineActor

RESULTS_NAMESPACE = "__results__"
_MISSING = object()


class ContainerActor(StagelineActor):
    """Serializes every read and write of one run's artifacts."""

    def __init__(self, data: Artifacts) -> None:
        super().__init__()
        self.data = data

    def on_receive(self, message: Any) -> Any:
        operation: Callable[[Artifacts], Any] = message
        return operation(self.data)


class Container:
    """A run's artifacts and the actor that guards them while the run is active."""

    def __init__(self, run_id: str, data: Artifacts | None = None) -> None:
        self.run_id = run_id
        self._data: Artifacts = data if data is not None else {}
        self._lock = threading.Lock()
        self._ref: pykka.ActorRef[ContainerActor] | None = None
        self._open = False

    def open(self) -> None:
        """Allow access for a new segment of the run (its actor starts on first use)."""
        with self._lock:
            self._open = True

    def call(self, operation: Callable[[Artifacts], Any], who: str = "") -> Any:
        """Run `operation(data)` on the container's actor and return its answer."""
        with self._lock:
            if not self._open:
                raise ArtifactError(
                    f"the artifacts of run {self.run_id!r} are closed{who}: the run paused or "
                    "ended, or this step attempt was abandoned; a step may use artifacts only "
                    "while it runs"
                )
            if self._ref is None:
                self._ref = ContainerActor.start(self._data)
            ref = self._ref
        try:
            return ref.ask(operation, timeout=60)
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            raise ArtifactError(
                f"the artifacts of run {self.run_id!r} are unavailable{who}: {exc}"
            ) from exc

    def record_result(self, key: str, patch: Any) -> None:
        """Keep a step's result under `key` ("<stage>/<step>", prefixed by a child's path).

        Without a running actor the caller is the only accessor.
        """

        def write(data: Artifacts) -> None:
            data.setdefault(RESULTS_NAMESPACE, {})[key] = patch

        with self._lock:
            if self._ref is None:
                write(self._data)
                return
            ref = self._ref
        ref.tell(write)

    def export_bundle(self, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """The artifacts as a bundle (through the actor if it runs)."""
        with self._lock:
            ref = self._ref
            if ref is None:
                return bytes(encode_bundle(self.run_id, self._data, max_bytes=max_bytes))
        answer: Any = ref.ask(lambda data: encode_bundle(self.run_id, data, max_bytes=max_bytes))
        return bytes(answer)

    def stop(self) -> None:
        """Close access and stop the actor (after queued accesses); the data stays."""
        with self._lock:
            self._open = False
            ref, self._ref = self._ref, None
        if ref is not None:
            ref.stop(block=True, timeout=10)

    def view(self, namespace: str, who: str = "") -> ArtifactsView:
        return ArtifactsView(self, namespace, who)


class ArtifactsView:
    """`ctx.artifacts`: get/put/delete/keys scoped to a pipeline path; `.root` is run-wide.

    A view belongs to one step attempt; once the run stops waiting for that attempt
    (timeout, abort, failed stage) it is closed and every access raises ArtifactError.
    """

    __slots__ = ("_closed", "_container", "_who", "namespace")

    def __init__(self, container: Container, namespace: str, who: str = "") -> None:
        self._container = container
        self.namespace = namespace
        self._who = who
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def _call(self, operation: Callable[[Artifacts], Any]) -> Any:
        if self._closed:
            raise ArtifactError(
                f"artifacts are closed{self._who} of run {self._container.run_id!r}: this "
                "attempt was abandoned (timeout, abort or a failed sibling)"
            )
        return self._container.call(operation, self._who)

    @property
    def root(self) -> ArtifactsView:
        view = ArtifactsView(self._container, "", self._who)
        view._closed = self._closed
        return view

    def get(self, key: str, default: Any = None) -> Any:
        ns = self.namespace
        value = self._call(lambda data: data.get(ns, {}).get(key, _MISSING))
        return default if value is _MISSING else copy_state(value)

    def put(self, key: str, value: Any) -> None:
        _check_key(key)
        problem = find_unstorable(value)
        if problem is not None:
            where = f"{key}.{problem[0]}" if problem[0] != "<root>" else key
            raise ArtifactError(
                f"artifact {where!r}{self._who} of run {self._container.run_id!r} cannot be "
                f"bundled: {describe(problem[1])}"
            )
        ns, stored = self.namespace, copy_state(value)
        self._call(lambda data: data.setdefault(ns, {}).__setitem__(key, stored))

    def delete(self, key: str) -> None:
        ns = self.namespace
        self._call(lambda data: data.get(ns, {}).pop(key, None))

    def keys(self) -> list[str]:
        ns = self.namespace
        return list(self._call(lambda data: sorted(data.get(ns, {}))))

    def __repr__(self) -> str:
        return f"Artifacts(namespace={self.namespace!r})"


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise ArtifactError(f"artifact keys are non-empty strings, got {key!r}")
