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

from stageline.actors.context import RunContext
from stageline.actors.factory import PipelineFactory
from stageline.actors.registry import Registry
from stageline.core.checkpoint import (
    Checkpoint,
    clear_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from stageline.core.clock import ManualClock, SystemClock
from stageline.core.definition import DELETE, TERMINATE, Pause, Pipeline, Stage, Step
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
from stageline.core.store import RunInfo, Store
from stageline.core.supervision import RetryPolicy

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
