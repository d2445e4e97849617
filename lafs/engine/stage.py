"""Training stages as data: a stage pairs a config class with the task that trains it, under a name.

    PRETRAIN = register_stage("pretrain", PretrainConfig, PretrainTask)  # in the stage's own module
    import lafs.tasks.pretrain  # elsewhere: importing the stage's module registers it
    summary = STAGES.get("pretrain").run("configs/pretrain/demo.yaml", ["output_dir=runs/x"])

Each stage's module registers its own (`lafs.tasks.pretrain`, `lafs.tasks.landmarks`, `finetune.task`), so callers
that run several stages (the demo, the few-shot protocol, the GPU check) hold typed pairs instead of matching a task
with its config by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lafs.config import load_config
from lafs.engine.config import RunConfig
from lafs.engine.loop import RunSummary, fit
from lafs.engine.task import Task
from lafs.registry import Registry

ConfigT = TypeVar("ConfigT", bound=RunConfig)


@dataclass(frozen=True)
class Stage(Generic[ConfigT]):
    """A training stage: its name, its config class and its task (built from a config of that class)."""

    name: str
    config: type[ConfigT]
    task: Callable[[ConfigT], Task]

    def load(self, config_file: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> ConfigT:
        """The stage's config from a YAML file (None: the defaults) and ``key.sub=value`` overrides."""
        return load_config(self.config, config_file, list(overrides))

    def run(self, config_file: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> RunSummary:
        """Load the config and train the stage through `fit`."""
        cfg = self.load(config_file, overrides)
        return fit(cfg, self.task(cfg))


STAGES: Registry[Stage[Any]] = Registry("training stage")


def register_stage(name: str, config: type[ConfigT], task: Callable[[ConfigT], Task]) -> Stage[ConfigT]:
    """Make the stage ``name`` and register it in `STAGES` (a name taken twice is a ValueError)."""
    stage = Stage(name, config, task)
    STAGES.register(name)(stage)
    return stage
