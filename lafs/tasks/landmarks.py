"""The learned landmark predictor as a task: distillation from a landmark cache (the MediaPipe teacher).

A MobileNet (`lafs.models.landmark_predictor`) regresses the K landmarks of the data's landmark set in pixels of its
image size; both come from the ``data`` section, the one place they are set. A seeded share of the identities is
held out whole and measured every ``eval_every`` optimiser steps and at the end, next to the plain template. The
pieces are in `lafs.landmarks.distill`; the engine (`lafs.engine.fit`) runs the loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader

from lafs.config import config_to_dict
from lafs.data.collate import collate_faces, normalize_images
from lafs.data.open import SYNTHETIC, DatasetConfig
from lafs.engine import OptimConfig, RunConfig, RunContext, Task, TrainingParts, register_stage
from lafs.engine.accelerator import use_fused_adamw
from lafs.errors import ConfigError, DataError, LafsError
from lafs.files import write_atomic
from lafs.landmarks.distill import DistillAugmentConfig, LandmarkFaces, evaluate, landmark_loss, split_by_identity
from lafs.models.landmark_predictor import (
    LandmarkPredictor,
    LandmarkPredictorConfig,
    build_landmark_predictor,
    save_landmark_predictor,
)
from lafs.schedules import warmup_cosine


@dataclass
class ModelConfig:
    """The predictor's architecture; its landmark set and image size are the data's (``data.landmark_set``, ...)."""

    backbone: str = "mobilenetv3_large_100"  # timm CNN, built with pretrained=False (LAFS: MobileNetV3-large)
    dropout: float = 0.5  # before the regression layer (LAFS)


@dataclass
class LandmarkOptimConfig(OptimConfig):
    epochs: int = 60  # a MobileNet from scratch needs tens of epochs to regress landmarks to ~1 px
    batch_size: int = 128  # per process; small CNN, fits easily on one GPU
    clip_grad: float = 5.0  # max gradient norm; 0 turns clipping off
    lr: float = 1e-3  # AdamW peak LR (not scaled with the batch), a standard value for MobileNets from scratch
    min_lr: float = 1e-6  # end of the cosine decay
    warmup_epochs: int = 1  # linear warm-up: fresh BatchNorm statistics are noisy at first
    weight_decay: float = 0.05  # AdamW decay on weights (not on biases and norms)

    def validate(self) -> None:
        super().validate()
        self.check_recipe(self.warmup_epochs, self.lr, self.min_lr, {"weight_decay": self.weight_decay})


@dataclass
class TrainLandmarksConfig(RunConfig):
    """Distillation of the landmark predictor. There is no device key: accelerate places the run (a GPU if there is
    one; ``accelerate launch`` for several)."""

    output_dir: Path = Path("runs/landmarks")  # config, checkpoints, logs, predictor/ and report.json land here
    # A real run names a dataset and its MediaPipe cache; "synthetic" uses the built-in faces and their exact points.
    # data.landmark_set and data.image_size are also the predictor's.
    data: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(path=SYNTHETIC, landmarks="", missing_landmarks="skip")
    )
    model: ModelConfig = field(default_factory=ModelConfig)  # LAFS: MobileNetV3-large
    augment: DistillAugmentConfig = field(default_factory=DistillAugmentConfig)
    optim: LandmarkOptimConfig = field(default_factory=LandmarkOptimConfig)
    held_out_fraction: float = 0.05  # identities kept out of training to measure the error on
    loss: Literal["smooth_l1", "l1"] = "smooth_l1"  # robust to the teacher's occasional bad points
    smooth_l1_beta: float = 1.0  # pixels: quadratic below, L1 above (sub-pixel errors are not outliers)
    num_workers: int = 4  # data-loading processes per training process (decoding + warping is the CPU cost)
    log_every: int = 50  # optimiser steps between log lines

    def validate(self) -> None:
        super().validate()
        if self.data.path != SYNTHETIC and self.data.landmarks in ("", "template", "none"):
            raise ConfigError(
                f"data.landmarks must be a landmark cache folder (python -m tools.landmarks), got "
                f"'{self.data.landmarks}': there is nothing to distil from"
            )
        if not 0 < self.held_out_fraction < 1:
            raise ConfigError(f"held_out_fraction must lie in (0, 1), got {self.held_out_fraction}")
        if self.smooth_l1_beta <= 0:
            raise ConfigError(f"smooth_l1_beta must be > 0, got {self.smooth_l1_beta}")
        self.predictor_config().validate()

    def predictor_config(self) -> LandmarkPredictorConfig:
        """The predictor to train: the model section's architecture over the data's landmark set and image size."""
        m, d = self.model, self.data
        return LandmarkPredictorConfig(m.backbone, d.landmark_set, d.image_size, m.dropout)


class LandmarkTask(Task):
    """Predictor + AdamW, warm-up + cosine LR, smooth-L1 in pixels; held-out errors; exports predictor/ + report."""

    name = "landmarks"
    fixed_on_resume = ("data", "synthetic", "model", "held_out_fraction")

    def __init__(self, cfg: TrainLandmarksConfig) -> None:
        super().__init__(cfg)
        self.cfg: TrainLandmarksConfig = cfg
        self.held_out_result: tuple[int, dict[str, float]] | None = None  # (step, errors): export reuses them

    def build_dataset(self, accelerator: Accelerator) -> LandmarkFaces:
        cfg = self.cfg
        faces = self.open_faces(accelerator)  # items with image, landmarks, landmark_valid
        if len(faces) == 0:
            raise DataError(f"{cfg.data.path}: no image with landmarks in {cfg.data.landmarks} (all skipped)")
        self.labels = np.asarray(faces.labels)
        self.train_positions, self.held_positions = split_by_identity(self.labels, cfg.held_out_fraction, cfg.seed)
        self.held_set = LandmarkFaces(faces, self.held_positions, cfg.data.landmark_set)
        return LandmarkFaces(faces, self.train_positions, cfg.data.landmark_set, cfg.augment, cfg.seed)

    def build(self, accelerator: Accelerator, dataset: Any) -> TrainingParts:
        model = build_landmark_predictor(self.cfg.predictor_config())
        groups = param_groups_weight_decay(model, self.cfg.optim.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.optim.lr, fused=use_fused_adamw(accelerator))
        return TrainingParts(model, optimizer)

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        o = self.cfg.optim
        self.lr_schedule = warmup_cosine(o.lr, o.min_lr, o.warmup_epochs, run.steps_per_epoch, run.total_steps)

    def learning_rate(self, step: int) -> float:
        return self.lr_schedule(step)

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """Landmark loss of one micro-batch: images (B, 3, H, W) uint8, landmarks (B, K, 2), landmark_valid (B, K)."""
        assert self.model is not None
        predicted = self.model(normalize_images(batch["image"])).float()
        loss = landmark_loss(
            predicted, batch["landmarks"], batch["landmark_valid"], self.cfg.loss, self.cfg.smooth_l1_beta
        )
        bad = (~torch.isfinite(loss)).float()
        if self.run.accelerator.num_processes > 1:  # every process stops together, none waits in a collective
            bad = self.run.accelerator.reduce(bad, "sum")
        if bad:
            raise LafsError(f"non-finite landmark loss at step {step + 1}: lower optim.lr")
        return {"loss": loss}

    # ------------------------------------------------------------------------------ validation and export --

    @property
    def validates(self) -> bool:
        return True  # the held-out identities are always there

    def validate(self, step: int) -> dict[str, float]:
        return {f"held_out_{k}": float(v) for k, v in self.held_out(step).items()}

    def held_out(self, step: int) -> dict[str, float]:
        """Held-out errors of the predictor after ``step`` optimiser steps (computed once per step)."""
        if self.held_out_result is None or self.held_out_result[0] != step:
            loader = DataLoader(
                self.held_set,
                batch_size=self.cfg.optim.batch_size,
                num_workers=self.cfg.num_workers,
                collate_fn=collate_faces,
            )
            self.held_out_result = (step, evaluate(self.predictor(), loader, self.run.device))
        return self.held_out_result[1]

    def predictor(self) -> LandmarkPredictor:
        return self.run.accelerator.unwrap_model(self.model)

    def export(self, run_dir: Path, step: int) -> dict[str, Path]:
        """predictor/ (`save_landmark_predictor`) and report.json (held-out errors next to the template's)."""
        cfg = self.cfg
        source = {"stage": "train_landmarks", "data": cfg.data.path, "landmarks": cfg.data.landmarks, "steps": step}
        folder = save_landmark_predictor(self.predictor(), run_dir / "predictor", source=source)
        report = {
            "held_out": self.held_out(step),
            "held_out_identities": len(np.unique(self.labels[self.held_positions])),
            "train": {
                "images": len(self.train_positions),
                "identities": len(np.unique(self.labels[self.train_positions])),
                "steps": step,
                "processes": self.run.accelerator.num_processes,
                "device": str(self.run.device),
            },
            "predictor": str(folder),
            "config": config_to_dict(cfg),
        }
        write_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
        return {"predictor": folder, "report": run_dir / "report.json"}


LANDMARKS = register_stage("landmarks", TrainLandmarksConfig, LandmarkTask)
