"""The one training engine: `fit(run_config, task)` runs any stage's `Task` on a CPU, one GPU, many GPUs or nodes."""

from lafs.engine.config import OptimConfig, RunConfig
from lafs.engine.loop import RunSummary, fit
from lafs.engine.stage import STAGES, Stage, register_stage
from lafs.engine.task import RunContext, Task, TrainingParts

__all__ = [
    "STAGES",
    "OptimConfig",
    "RunConfig",
    "RunContext",
    "RunSummary",
    "Stage",
    "Task",
    "TrainingParts",
    "fit",
    "register_stage",
]
