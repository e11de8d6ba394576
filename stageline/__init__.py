"""stageline: a durable, actor-based pipeline runtime to embed in long-running daemons."""

import os as _os

# In a source checkout, `stageline.core` etc. live in the top-level core/, actors/ and
# stores/ folders (pyproject's package-dir maps them when installed). When this folder
# shadows the installed package (python run from the checkout's root), let the checkout
# root serve those subpackages too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and all(
    _os.path.isfile(_os.path.join(_checkout, sub, "__init__.py"))
    for sub in ("core", "actors", "stores")
):
    __path__.append(_checkout)

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers see; at run time the names load on first use
    from stageline.actors.context import RunContext
    from stageline.actors.factory import PipelineFactory
    from stageline.actors.registry import Registry
    from stageline.core.admission import Limit
    from stageline.core.checkpoint import Checkpoint
    from stageline.core.clock import ManualClock, SystemClock
    from stageline.core.definition import DELETE, TERMINATE, Pause, Pipeline, Sleep, Stage, Step
    from stageline.core.errors import (
        ArtifactError,
        BundleError,
        CheckpointCorrupt,
        CheckpointError,
        CheckpointMismatch,
        CheckpointNotFound,
        DefinitionError,
        RoutingError,
        RunAborted,
        RunExistsError,
        RunExpired,
        RunNotFound,
        RunNotPaused,
        RunStateError,
        StageError,
        StagelineError,
        StepError,
        StepFailure,
        StepTimeout,
        StoreError,
    )
    from stageline.core.events import Event, PathNode
    from stageline.core.patch import PIPELINE_DATA_KEY
    from stageline.core.results import ChildResult, RunResult
    from stageline.core.schedule import Schedule
    from stageline.core.store import RunInfo, Store
    from stageline.core.supervision import RetryPolicy
    from stageline.stores.checkpoints import clear_checkpoint, read_checkpoint, write_checkpoint

# Each public name is imported from its module on first use (PEP 562), so `import
# stageline` (and `stageline --help`) does not pay for pykka, cbor2 and the actors until a
# name is used. A name in __all__ must be in this table (tests/test_layout.py checks).
_EXPORTS: dict[str, str] = {
    "RunContext": "stageline.actors.context",
    "PipelineFactory": "stageline.actors.factory",
    "Registry": "stageline.actors.registry",
    "Checkpoint": "stageline.core.checkpoint",
    "clear_checkpoint": "stageline.stores.checkpoints",
    "read_checkpoint": "stageline.stores.checkpoints",
    "write_checkpoint": "stageline.stores.checkpoints",
    "ManualClock": "stageline.core.clock",
    "SystemClock": "stageline.core.clock",
    "DELETE": "stageline.core.definition",
    "TERMINATE": "stageline.core.definition",
    "Limit": "stageline.core.admission",
    "Pause": "stageline.core.definition",
    "Sleep": "stageline.core.definition",
    "Pipeline": "stageline.core.definition",
    "Stage": "stageline.core.definition",
    "Step": "stageline.core.definition",
    "ArtifactError": "stageline.core.errors",
    "BundleError": "stageline.core.errors",
    "CheckpointCorrupt": "stageline.core.errors",
    "CheckpointError": "stageline.core.errors",
    "CheckpointMismatch": "stageline.core.errors",
    "CheckpointNotFound": "stageline.core.errors",
    "DefinitionError": "stageline.core.errors",
    "RoutingError": "stageline.core.errors",
    "RunAborted": "stageline.core.errors",
    "RunExistsError": "stageline.core.errors",
    "RunExpired": "stageline.core.errors",
    "RunNotFound": "stageline.core.errors",
    "RunNotPaused": "stageline.core.errors",
    "RunStateError": "stageline.core.errors",
    "StageError": "stageline.core.errors",
    "StagelineError": "stageline.core.errors",
    "StepError": "stageline.core.errors",
    "StepFailure": "stageline.core.errors",
    "StepTimeout": "stageline.core.errors",
    "StoreError": "stageline.core.errors",
    "Event": "stageline.core.events",
    "PathNode": "stageline.core.events",
    "PIPELINE_DATA_KEY": "stageline.core.patch",
    "ChildResult": "stageline.core.results",
    "RunResult": "stageline.core.results",
    "Schedule": "stageline.core.schedule",
    "RunInfo": "stageline.core.store",
    "Store": "stageline.core.store",
    "RetryPolicy": "stageline.core.supervision",
}


_SUBPACKAGES = frozenset({"core", "actors", "stores", "testing", "cli", "daemon"})


def __getattr__(name: str) -> object:
    import importlib

    if name in _SUBPACKAGES:  # `import stageline; stageline.core...` as before
        return importlib.import_module(f"stageline.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stageline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.1.0"

__all__ = [
    "DELETE",
    "PIPELINE_DATA_KEY",
    "TERMINATE",
    "ArtifactError",
    "BundleError",
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointNotFound",
    "ChildResult",
    "DefinitionError",
    "Event",
    "Limit",
    "ManualClock",
    "PathNode",
    "Pause",
    "Pipeline",
    "PipelineFactory",
    "Registry",
    "RetryPolicy",
    "RoutingError",
    "RunAborted",
    "RunContext",
    "RunExistsError",
    "RunExpired",
    "RunInfo",
    "RunNotFound",
    "RunNotPaused",
    "RunResult",
    "RunStateError",
    "Schedule",
    "Sleep",
    "Stage",
    "StageError",
    "StagelineError",
    "Step",
    "StepError",
    "StepFailure",
    "StepTimeout",
    "Store",
    "StoreError",
    "SystemClock",
    "clear_checkpoint",
    "read_checkpoint",
    "write_checkpoint",
]
