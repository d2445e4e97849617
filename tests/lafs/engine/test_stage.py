"""Stages as data: each stage's module registers (name, config class, task); callers load and run them by it."""

from __future__ import annotations

from pathlib import Path

import pytest

import finetune.task
import lafs.tasks.landmarks
import lafs.tasks.pretrain
from lafs.engine import STAGES, Stage, register_stage
from lafs.engine.config import RunConfig
from lafs.errors import ConfigError


def test_the_three_stages_are_registered_with_their_config_and_task() -> None:
    assert {"pretrain", "finetune", "landmarks"} <= set(STAGES.names())
    for stage, config, task in [
        (lafs.tasks.pretrain.PRETRAIN, lafs.tasks.pretrain.PretrainConfig, lafs.tasks.pretrain.PretrainTask),
        (finetune.task.FINETUNE, finetune.task.FinetuneConfig, finetune.task.FinetuneTask),
        (lafs.tasks.landmarks.LANDMARKS, lafs.tasks.landmarks.TrainLandmarksConfig, lafs.tasks.landmarks.LandmarkTask),
    ]:
        assert STAGES.get(stage.name) is stage and stage.config is config and stage.task is task
        assert task.name == stage.name  # what the run's summary line calls it


def test_load_applies_the_file_then_the_overrides(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("seed: 3\noptim:\n  batch_size: 5\n")
    cfg = lafs.tasks.pretrain.PRETRAIN.load(config, ["optim.batch_size=7", f"output_dir={tmp_path / 'run'}"])
    assert isinstance(cfg, lafs.tasks.pretrain.PretrainConfig)
    assert (cfg.seed, cfg.optim.batch_size, cfg.output_dir) == (3, 7, tmp_path / "run")
    with pytest.raises(ConfigError):
        lafs.tasks.pretrain.PRETRAIN.load(None, ["optim.no_such_key=1"])


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_stage("pretrain", RunConfig, lafs.tasks.pretrain.PretrainTask)  # type: ignore[arg-type]
    assert isinstance(STAGES.get("pretrain"), Stage)
    with pytest.raises(ConfigError, match="unknown training stage"):
        STAGES.get("no-such-stage")
