"""`lafs.engine.fit` on a small least-squares task: hook order, cadence, accumulation, resume, output."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from lafs.config import load_config
from lafs.data.open import DatasetConfig
from lafs.engine import OptimConfig, RunConfig, Task, TrainingParts, fit
from lafs.engine.checkpoints import checkpoints
from lafs.engine.loop import RunSummary, train_micro_batch
from lafs.engine.run_log import read_log
from lafs.errors import ConfigError, DataError, LafsError

WEIGHTS = torch.tensor([1.5, -2.0, 0.5])


class Points(torch.utils.data.Dataset):
    """``count`` points x (3,) with targets y = x . WEIGHTS: a problem whose answer is known."""

    def __init__(self, count: int) -> None:
        self.x = torch.randn(count, 3, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.x[i] @ WEIGHTS, "index": i}


@dataclass
class LineConfig(RunConfig):
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=4, batch_size=4))
    num_workers: int = 0
    log_every: int = 1
    checkpoint_every: int = 2
    images: int = 16  # points in the training set


class LineTask(Task):
    """Least squares on `Points`, recording every hook call."""

    name = "line"

    def __init__(self, cfg: LineConfig) -> None:
        super().__init__(cfg)
        self.cfg: LineConfig = cfg
        self.calls: list[tuple[str, int]] = []

    def build_dataset(self, accelerator: Accelerator) -> Points:
        return Points(self.cfg.images)

    def collate_fn(self) -> Callable[[Any], dict[str, Any]]:
        return torch.utils.data.default_collate

    def build(self, accelerator: Accelerator, dataset: Any) -> TrainingParts:
        model = torch.nn.Linear(3, 1, bias=False)
        return TrainingParts(model, torch.optim.SGD(model.parameters(), lr=0.1))

    def learning_rate(self, step: int) -> float:
        return 0.1

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        self.calls.append(("step", step))
        assert self.model is not None
        loss = ((self.model(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()
        return {"mse_loss": loss, "loss": loss}

    def after_backward(self, step: int) -> None:
        self.calls.append(("after_backward", step))

    def after_micro_batch(self, step: int) -> None:
        self.calls.append(("after_micro_batch", step))

    def after_step(self, step: int, skipped: bool) -> None:
        self.calls.append(("after_step", step))

    def log_values(self, step: int, terms: Mapping[str, float]) -> dict[str, float]:
        return {"twice_loss": 2 * terms["loss"]}

    @property
    def validates(self) -> bool:
        return True

    def validate(self, step: int) -> dict[str, float]:
        self.calls.append(("validate", step))
        return {"weight_error": float((self.run.accelerator.unwrap_model(self.model).weight.detach() - WEIGHTS).norm())}

    def export(self, run_dir: Path, step: int) -> dict[str, Path]:
        path = run_dir / "weights.npy"
        np.save(path, self.run.accelerator.unwrap_model(self.model).weight.detach().numpy())
        return {"weights": path}


def train(out: Path, **changes: Any) -> LineTask:
    cfg = LineConfig(output_dir=out, **changes)
    task = LineTask(cfg)
    fit(cfg, task)
    return task


def test_hooks_run_in_order_with_accumulation(tmp_path):
    # 16 points, batch 4, 2 micro-batches per step: 2 optimiser steps per epoch.
    task = train(tmp_path / "run", optim=OptimConfig(epochs=1, batch_size=4, grad_accum=2), eval_every=1)
    cycle = [("step", 0), ("after_micro_batch", 0), ("step", 0), ("after_backward", 0), ("after_micro_batch", 0)]
    assert task.calls[:6] == [*cycle, ("after_step", 0)]
    assert task.calls.count(("validate", 1)) == 1 and task.calls.count(("validate", 2)) == 1
    assert [c for c in task.calls if c[0] == "after_step"] == [("after_step", 0), ("after_step", 1)]


def test_learns_logs_checkpoints_and_exports(tmp_path, capsys):
    out = tmp_path / "run"
    train(out, max_steps=None, optim=OptimConfig(epochs=25, batch_size=4))
    log = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in log] == list(range(1, 101))
    assert log[-1]["loss"] < 1e-3 * log[0]["loss"]
    assert log[0]["twice_loss"] == 2 * log[0]["loss"] and log[0]["epoch"] == 0.25 and log[0]["lr"] == 0.1
    assert np.allclose(np.load(out / "weights.npy"), WEIGHTS.numpy()[None], atol=1e-2)
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step_00000096", "step_00000098", "step_00000100"]
    assert read_log(out)[-1]["weight_error"] < 1e-2  # validated at the last step
    printed = capsys.readouterr().out.splitlines()  # not a terminal: plain progress lines, then the summary
    assert printed[0].startswith("line step 1/100 loss ") and printed[-1].startswith("line: 100 steps in ")
    assert f"weights -> {out / 'weights.npy'}" in printed[-1]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    train(whole, max_steps=7)
    part = tmp_path / "part"
    train(part, max_steps=3)
    resumed = train(part, max_steps=7)
    assert resumed.calls[0] == ("step", 3)  # continued, not restarted

    def losses(run_dir: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in read_log(run_dir) if "loss" in r]

    assert losses(part) == losses(whole) and len(losses(whole)) == 7
    assert np.array_equal(np.load(part / "weights.npy"), np.load(whole / "weights.npy"))


def test_too_few_batches_for_one_accumulation_cycle_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"16 images give each of 1 processes 4 batches of 4, fewer than "):
        train(tmp_path / "run", optim=OptimConfig(batch_size=4, grad_accum=5))


def test_a_torn_log_line_is_dropped_on_resume(tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=3)
    with (out / "log.jsonl").open("a") as log:
        log.write('{"step": 4, "loss": 0.12')  # a crash mid-write
    train(out, max_steps=5)
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 2, 3, 4, 5]


def test_resuming_with_a_changed_config(tmp_path, caplog):
    out = tmp_path / "run"
    train(out, max_steps=2)
    saved = (out / "config.yaml").read_text()
    refused = r"resuming .* with a different data: data.image_size 112 -> 96 .a new run needs another output_dir"
    with pytest.raises(ConfigError, match=refused):
        train(out, max_steps=4, data=DatasetConfig(path="synthetic", image_size=96))
    assert (out / "config.yaml").read_text() == saved  # a failed start writes nothing
    train(out, max_steps=4, images=12)  # not a fixed section: resumes, with a warning
    assert "resuming" in caplog.text and "with changed images" in caplog.text
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 2, 3, 4]


def test_a_failed_start_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"fewer than optim\.grad_accum"):
        train(out, optim=OptimConfig(batch_size=4, grad_accum=5))
    assert not out.exists() or not any(out.iterdir())


class FailingTask(LineTask):
    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        if step == 5:
            raise DataError("3 of 16 records are bad")  # what a reader raises past data.max_bad_fraction
        return super().training_step(batch, step)


def test_a_stop_on_bad_data_keeps_the_steps_done(tmp_path):
    out = tmp_path / "run"
    cfg = LineConfig(output_dir=out, checkpoint_every=100)
    with pytest.raises(DataError, match="records are bad"):
        fit(cfg, FailingTask(cfg))
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step_00000005"]
    assert train(out, max_steps=7).calls[0] == ("step", 5)  # fixed data: the rerun continues


def test_deterministic_reruns_are_bit_identical(tmp_path):
    threads = torch.get_num_threads()
    a = train(tmp_path / "a", max_steps=4, deterministic=True)
    b = train(tmp_path / "b", max_steps=4, deterministic=True)
    assert torch.equal(a.run.accelerator.unwrap_model(a.model).weight, b.run.accelerator.unwrap_model(b.model).weight)
    # Restored afterwards: runs in one process do not inherit each other's settings.
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_two_spellings_of_one_path_are_the_same_config(tmp_path, caplog):
    (tmp_path / "faces").mkdir()
    out = tmp_path / "run"
    train(out, max_steps=2, data=DatasetConfig(path=str(tmp_path / "faces")), images=16)
    train(out, max_steps=3, data=DatasetConfig(path=f"{tmp_path}/./faces/"), images=16)  # no refusal
    assert "with a different" not in caplog.text


class _Fp16OnCpu(Accelerator):
    """accelerate's fp16 path on a CPU: accelerate makes no GradScaler there, so the test attaches one."""

    @property
    def mixed_precision(self) -> str:
        return "fp16" if self.scaler is not None else super().mixed_precision


class _TwoParameters(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))


class _KnownGradients(Task):
    """loss = 3 a0 + 4 a1 + 0.5 b: gradients (3, 4) (norm 5) and (0.5,), recorded after clipping."""

    def learning_rate(self, step: int) -> float:
        return 0.0

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        assert self.model is not None
        return {"loss": self.model.a @ torch.tensor([3.0, 4.0]) + 0.5 * self.model.b.sum()}

    def after_backward(self, step: int) -> None:
        assert self.model is not None
        self.seen = {name: p.grad.clone() for name, p in self.model.named_parameters() if p.grad is not None}


def clipped(clip_grad: float, clip_mode: str, scaled: bool = False) -> dict[str, list[float]]:
    accelerator = _Fp16OnCpu(cpu=True)
    if scaled:
        accelerator.native_amp, accelerator.scaler = True, torch.amp.GradScaler("cpu", init_scale=1024.0)
    model = _TwoParameters()
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.0))
    task = _KnownGradients(RunConfig())
    task.model = model
    train_micro_batch(accelerator, task, optimizer, {}, 0, clip_grad, clip_mode)  # type: ignore[arg-type]
    return {name: grad.tolist() for name, grad in task.seen.items()}


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "fp16-scaler"])
def test_global_and_per_parameter_clipping(scaled):
    # Global at 3: one norm sqrt(25 + 0.25) = 5.0249, every gradient times 3 / 5.0249 = 0.59702.
    both = clipped(3.0, "global", scaled)
    assert both["a"] == pytest.approx([1.79107, 2.38809], abs=1e-4) and both["b"] == pytest.approx([0.29851], abs=1e-4)
    # Per parameter at 3 (DINO / released LAFS pretraining): a (norm 5) is scaled to norm 3, b (norm 0.5) is kept.
    each = clipped(3.0, "per_parameter", scaled)
    assert each["a"] == pytest.approx([1.8, 2.4], abs=1e-5) and each["b"] == pytest.approx([0.5], abs=1e-6)


def test_the_scaler_scales_what_clipping_unscales():
    # Without clipping nothing unscales before after_backward: the loss was scaled by 1024 (the check above can fail).
    assert clipped(0.0, "per_parameter", scaled=True)["a"] == [3072.0, 4096.0]


def test_clip_mode_is_checked():
    with pytest.raises(ConfigError, match=r"optim\.clip_mode"):
        load_config(LineConfig, overrides=["optim.clip_mode=each"])


def test_the_last_line_says_how_well_and_where(tmp_path: Path) -> None:
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text("{}")
    (tmp_path / "tensorboard").mkdir()
    validation = {"lfw_accuracy": 0.8125, "mean_accuracy": 0.8125, "best_mean_accuracy": 0.85}
    summary = RunSummary(7, 12.4, {"loss": 1.5, "lr": 0.1}, {"encoder": tmp_path / "encoder"}, validation, tmp_path)
    assert summary.line("finetune") == (
        f"finetune: 7 steps in 12 s; loss 1.5000; lfw_accuracy 81.25 %, mean_accuracy 81.25 %, "
        f"best_mean_accuracy 85.00 %; encoder -> {tmp_path}/encoder; best (by mean_accuracy) -> {tmp_path}/best; "
        f"TensorBoard: tensorboard --logdir {tmp_path}/tensorboard"
    )
    assert RunSummary(3, 1.0).line("pretrain") == "pretrain: 3 steps in 1 s"


class SpikyLineTask(LineTask):
    """`LineTask` whose loss is NaN at the optimiser steps in ``nan_steps``."""

    def __init__(self, cfg: LineConfig, nan_steps: set[int]) -> None:
        super().__init__(cfg)
        self.nan_steps = nan_steps
        self.skipped: list[int] = []

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        terms = super().training_step(batch, step)
        if step in self.nan_steps:
            terms = {name: value * float("nan") for name, value in terms.items()}
        return terms

    def after_step(self, step: int, skipped: bool) -> None:
        if skipped:
            self.skipped.append(step)


def test_a_non_finite_step_is_skipped_and_logged(tmp_path: Path) -> None:
    cfg = LineConfig(output_dir=tmp_path / "run")
    task = SpikyLineTask(cfg, nan_steps={3})
    weights: dict[int, torch.Tensor] = {}
    original = task.after_micro_batch

    def remember(step: int) -> None:  # the weights after each step's update (or its skip)
        original(step)
        weights[step] = task.run.accelerator.unwrap_model(task.model).weight.detach().clone()

    task.after_micro_batch = remember  # type: ignore[method-assign]
    fit(cfg, task)
    assert task.skipped == [3] and torch.equal(weights[3], weights[2])  # step 3 left the weights as they were
    records = {r["step"]: r for r in read_log(tmp_path / "run")}
    assert records[4]["nonfinite_skipped"] == 1.0 and "nonfinite_skipped" not in records[5]
    assert np.isfinite(np.load(tmp_path / "run" / "weights.npy")).all()


def test_a_diverged_run_stops_with_one_line_and_writes_no_nan(tmp_path: Path) -> None:
    cfg = LineConfig(output_dir=tmp_path / "run", max_nonfinite_steps=2)
    with pytest.raises(LafsError) as error:
        fit(cfg, SpikyLineTask(cfg, nan_steps=set(range(5, 100))))
    assert str(error.value).startswith("step 7: mse_loss, loss not finite for 3 steps in a row (3 skipped in all; ")
    assert "the weights are those of step 5)" in str(error.value) and "lower optim.lr (0.1 now)" in str(error.value)
    assert not (tmp_path / "run" / "weights.npy").exists()  # no export
    assert checkpoints(tmp_path / "run" / "checkpoints")  # the steps done are kept, with finite weights


def test_weights_gone_non_finite_are_never_checkpointed(tmp_path: Path) -> None:
    # Weights sent to infinity after step 2 (as an update with a huge learning rate can): from then on every loss is
    # non-finite and skipped, and the checkpoint due at step 4 must not be written.
    class HugeStep(LineTask):
        def after_micro_batch(self, step: int) -> None:
            if step == 2:
                self.run.accelerator.unwrap_model(self.model).weight.data.fill_(float("inf"))

    cfg = LineConfig(output_dir=tmp_path / "run")
    with pytest.raises(LafsError, match=r"step 4: the weights are no longer finite, so no checkpoint or encoder is "):
        fit(cfg, HugeStep(cfg))
    saved = checkpoints(tmp_path / "run" / "checkpoints")
    assert [path.name for path in saved] == ["step_00000002"] and not (tmp_path / "run" / "weights.npy").exists()
