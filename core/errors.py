"""The one exception hierarchy of stageline; every error says what went wrong and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class StagelineError(Exception):
    """Base of every error stageline raises or reports."""

    kind = "error"


class DefinitionError(StagelineError):
    """A pipeline definition is invalid; `problems` lists every problem found."""

    kind = "definition"

    def __init__(self, pipeline_id: object, problems: list[str], *, what: str = "pipeline") -> None:
        self.pipeline_id = pipeline_id
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{what} {pipeline_id!r} is invalid ({len(problems)} problem(s)); "
            f"fix these and construct it again:\n{lines}"
        )


class RoutingError(StagelineError):
    """A router named an unknown stage, or a run looped past `max_stage_runs`."""

    kind = "routing"


@dataclass(frozen=True, slots=True)
class StepFailure:
    """One step's final failure: its exception type, message and formatted traceback."""

    step_id: str
    type: str
    message: str
    traceback: str
    attempts: int = 1
    types: tuple[str, ...] = ()
    """The exception's classes, most derived first, as "module.qualname" (for retry_on)."""

    @property
    def summary(self) -> str:
        return f"{self.step_id}: {self.message}"


class StepError(StagelineError):
    """A step raised, returned something that is not a patch, or touched reserved state."""

    kind = "step"


class StepTimeout(StagelineError):
    """A step ran longer than its `timeout`."""

    kind = "step_timeout"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"step exceeded its timeout of {timeout}s")

    def __repr__(self) -> str:
        return f"StepTimeout({self.timeout}s)"


class StageError(StagelineError):
    """A stage failed: one or more steps failed, the router raised, or it timed out."""

    kind = "stage"

    def __init__(
        self,
        message: str,
        *,
        stage_id: str | None = None,
        steps: tuple[StepFailure, ...] = (),
        kind: str | None = None,
        traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.stage_id = stage_id
        self.steps = steps
        self.traceback = traceback
        if kind is not None:
            self.kind = kind


class RunStateError(StagelineError):
    """An operation does not fit the run's current status (e.g. running a context twice)."""

    kind = "run_state"


class RunAborted(StagelineError):
    """The run was aborted; reported as `RunResult.error` with `kind == "aborted"`."""

    kind = "aborted"


class RunExistsError(StagelineError):
    """A run with this run_id is already in the store."""

    kind = "run_exists"


class RunNotFound(StagelineError):
    """No run with this run_id is in the store."""

    kind = "run_not_found"


class RunNotPaused(StagelineError):
    """The run is not paused (it may have been resumed already by someone else)."""

    kind = "run_not_paused"


class RunExpired(StagelineError):
    """The run stayed paused longer than the registry's `checkpoint_ttl`."""

    kind = "run_expired"


class CheckpointError(StagelineError):
    """Base of the checkpoint problems met while resuming."""

    kind = "checkpoint"


class CheckpointNotFound(CheckpointError):
    kind = "checkpoint_not_found"


class CheckpointMismatch(CheckpointError):
    kind = "checkpoint_mismatch"


class CheckpointCorrupt(CheckpointError):
    kind = "checkpoint_corrupt"


class BundleError(StagelineError):
    """Bytes are not a valid stageline bundle, or a value cannot be put in one."""

    kind = "bundle"


class ArtifactError(StagelineError):
    kind = "artifact"


class StoreError(StagelineError):
    """The store failed or refused a write; committed data is untouched."""

    kind = "store"


class StateTooLarge(StoreError):
    """A commit's state (or a journal record) is over the store's `max_state_bytes`.

    Refused before anything is written, so the store never holds what it cannot read back.
    """

    kind = "state_too_large"


class CommitRefused(StoreError):
    """The store refused a commit for a reason that will not change (a value it cannot
    hold, a constraint it enforces): retrying would be refused again, so the run fails
    with this error instead of being recovered forever."""

    kind = "commit_refused"


class ConflictError(StoreError):
    """A compare-and-set commit met a newer version: another writer owns the run."""

    kind = "store_conflict"


class InternalError(StagelineError):
    """A bug inside stageline's runtime (not in user code); please report it."""

    kind = "internal"


_BY_KIND: dict[str, type[StagelineError]] = {
    cls.kind: cls
    for cls in (
        RoutingError,
        StepError,
        RunAborted,
        StoreError,
        CommitRefused,
        ConflictError,
        InternalError,
        RunStateError,
    )
}


def type_name(cls: type) -> str:
    """A class as "module.qualname": how failures record exception types."""
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_error(error: BaseException) -> str:
    """`repr(error)`, or a stand-in naming its type when user code made repr raise."""
    try:
        return repr(error)
    except Exception:
        return f"<{type(error).__name__} (its repr() raised)>"


def exception_types(error: BaseException) -> tuple[str, ...]:
    """Every class of `error` (most derived first, without `object`), by `type_name`."""
    return tuple(type_name(cls) for cls in type(error).__mro__ if cls is not object)


def error_to_record(error: BaseException) -> dict[str, Any]:
    """A storable description of an error (for the journal and the run row).

    `types` names the classes of what caused it (see `exception_types`): the router's
    exception for a router that raised, else the error itself. Failed steps keep their
    own `types` under `steps`.
    """
    cause = error.__cause__ if isinstance(error, StageError) and error.__cause__ else error
    record: dict[str, Any] = {
        "kind": getattr(error, "kind", "error"),
        "type": type(error).__name__,
        "message": str(error),
        "types": list(exception_types(cause)),
    }
    if isinstance(error, StageError):
        record["stage_id"] = error.stage_id
        record["traceback"] = error.traceback
        record["steps"] = [
            {
                "step_id": s.step_id,
                "type": s.type,
                "message": s.message,
                "traceback": s.traceback,
                "attempts": s.attempts,
                "types": list(s.types),
            }
            for s in error.steps
        ]
    return record


def error_from_record(record: dict[str, Any]) -> StagelineError:
    """Rebuild the error described by `error_to_record` (never runs stored code)."""
    message = str(record.get("message", ""))
    kind = str(record.get("kind", "error"))
    if record.get("type") == "StageError" or "steps" in record:
        steps = tuple(
            StepFailure(
                step_id=str(s["step_id"]),
                type=str(s["type"]),
                message=str(s["message"]),
                traceback=str(s["traceback"]),
                attempts=int(s.get("attempts", 1)),
                types=tuple(str(t) for t in s.get("types", ())),
            )
            for s in record.get("steps", ())
        )
        stage_id = record.get("stage_id")
        return StageError(
            message,
            stage_id=None if stage_id is None else str(stage_id),
            steps=steps,
            kind=kind,
            traceback=str(record.get("traceback", "")),
        )
    cls = _BY_KIND.get(kind, StagelineError)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error
