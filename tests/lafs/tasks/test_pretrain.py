"""PretrainTask's schedules (as written, or stretched by optim.schedules=relative) and its log path's warnings."""

from __future__ import annotations

import logging

import pytest

from lafs.config import load_config
from lafs.engine import RunContext
from lafs.engine.checkpoints import TrainState
from lafs.tasks.pretrain import PretrainConfig, PretrainTask


def set_up(*overrides: str, steps_per_epoch: int = 10) -> PretrainTask:
    """A task set up as the engine would, for ``steps_per_epoch`` steps of 256 images (no model: schedules only)."""
    cfg = load_config(PretrainConfig, overrides=list(overrides))
    task = PretrainTask(cfg)
    total = cfg.optim.epochs * steps_per_epoch
    task.setup(RunContext(None, TrainState(), steps_per_epoch, 256, total))  # type: ignore[arg-type]
    return task


def test_default_schedules_are_lafs_epochs():
    task = set_up()  # 41 epochs of 10 steps
    assert task.schedule_steps == {
        "optim.warmup_epochs": 100,
        "dino.warmup_teacher_temp_epochs": 300,
        "dino.freeze_last_layer_epochs": 10,
    }
    assert task.teacher_temp(150) == pytest.approx(0.055) and task.teacher_temp(300) == 0.04
    assert task.learning_rate(99) == pytest.approx(5e-4)  # the warm-up's last step reaches the base rate


def test_relative_schedules_stretch_with_the_run(caplog):
    long = set_up("optim.epochs=82", "optim.schedules=relative")  # twice LAFS's 41 epochs: every warm-up doubles
    assert long.schedule_steps == {
        "optim.warmup_epochs": 200,
        "dino.warmup_teacher_temp_epochs": 600,
        "dino.freeze_last_layer_epochs": 20,
    }
    assert long.teacher_temp(300) == pytest.approx(0.055) and long.learning_rate(199) == pytest.approx(5e-4)
    with caplog.at_level(logging.INFO, logger="lafs.pretrain"):
        short = set_up("optim.epochs=17", "optim.schedules=relative", steps_per_epoch=3)
    # 10, 30 and 1 of 41 epochs in 17: 4.146, 12.44, 0.4146 epochs, of 3 steps each (rounded)
    assert short.schedule_steps == {
        "optim.warmup_epochs": 12,
        "dino.warmup_teacher_temp_epochs": 37,
        "dino.freeze_last_layer_epochs": 1,
    }
    (line,) = [r.getMessage() for r in caplog.records if "optim.schedules=relative" in r.getMessage()]
    assert line == (
        "optim.schedules=relative, LAFS's 41 epochs -> 17: optim.warmup_epochs 10 -> 4.146, "
        "dino.warmup_teacher_temp_epochs 30 -> 12.44, dino.freeze_last_layer_epochs 1 -> 0.4146"
    )


def terms(loss: float, entropy_ratio: float) -> dict[str, float]:
    log_k = 6.931471805599453  # log 1024
    entropy = entropy_ratio * log_k
    return {
        "dino_loss": loss,
        "loss": loss,
        "teacher_entropy": entropy,
        "teacher_batch_entropy": log_k,
        "log_classes": log_k,
    }


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_nothing_learned_is_warned_once_and_at_the_end(caplog):
    """A flat loss with a near-uniform teacher, logged every 5 steps of a run cut at 50: one warning at step 30 (6
    log points, 60 % of the run), one more at its last step; no collapse warning (0.94 < 0.95 log K)."""
    task = set_up("optim.epochs=10", "max_steps=50")
    flat = [6.72, 6.71, 6.73, 6.72, 6.74, 6.73, 6.74, 6.73, 6.74, 6.74]
    with caplog.at_level(logging.INFO, logger="lafs.pretrain"):
        for i, loss in enumerate(flat):
            values = task.log_values(5 * i + 4, terms(loss, 0.94))
            assert set(values) == {"teacher_temp", "momentum"}
    first, last = warnings_logged(caplog)
    # 6 points: windows of 2, mean(6.72, 6.71) = 6.715 -> mean(6.74, 6.73) = 6.735; at the end 10 points, windows of 3
    assert first.startswith("step 30: nothing learned after 60% of the run: DINO loss 6.715 -> 6.735 (+0.3%)")
    assert last.startswith("pretrain ended: nothing learned after 100% of the run: DINO loss 6.720 -> 6.737")


def test_a_learning_run_is_not_warned(caplog):
    task = set_up("optim.epochs=10")
    with caplog.at_level(logging.INFO, logger="lafs.pretrain"):
        for i in range(10):
            task.log_values(10 * i + 9, terms(6.7 - 0.1 * i, 0.94))  # the loss falls
        for i in range(10):
            task.log_values(10 * i + 9, terms(6.7, 0.8))  # flat, but the teacher says something
    assert warnings_logged(caplog) == []
