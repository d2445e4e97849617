"""Train the learned landmark predictor by distillation from a landmark cache (the MediaPipe teacher).

    python -m tools.train_landmarks data.path=DATA data.landmarks=CACHE [key=value ...]
    python -m tools.train_landmarks --config FILE.yaml [key=value ...]
    python -m tools.train_landmarks data.path=synthetic [key=value ...]     (built-in faces with exact landmarks)

DATA is a .rec, an image folder or a path,label list file of aligned faces; CACHE is its landmark cache from
``python -m tools.landmarks`` (faces MediaPipe missed are skipped: data.missing_landmarks=skip). A seeded share of
the identities (held_out_fraction) is held out: no identity is in both parts. Training: AdamW, linear warm-up then
cosine LR, smooth-L1 (or L1) in pixels over valid landmarks, random flip (landmark ids swapped with the set's flip
permutation) and a small random rotation / scale / shift applied to image and points by one affine map.

output_dir ends up holding config.yaml, log.jsonl, tensorboard/, predictor/ (model.safetensors + config.json, load
it with `lafs.models.landmark_predictor.load_landmark_predictor`) and report.json: the held-out mean pixel error
(Euclidean distance per landmark) and NME (by the inter-ocular distance, outer eye corners), next to the same
errors of the plain template as a reference line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader, Dataset

from lafs.augment import flip_map, move_landmarks
from lafs.cli import entry_point
from lafs.config import config_to_dict, parse_cli, save_config
from lafs.data.collate import collate_faces, normalize_images
from lafs.data.open import DatasetConfig, open_dataset
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.dino import cosine_schedule
from lafs.errors import ConfigError, DataError
from lafs.files import write_atomic
from lafs.landmarks.align import warp_image
from lafs.landmarks.sets import get_landmark_set
from lafs.models.landmark_predictor import (
    LandmarkPredictor,
    LandmarkPredictorConfig,
    build_landmark_predictor,
    save_landmark_predictor,
)
from lafs.run_log import RunLog

SYNTHETIC = "synthetic"
EYE_CORNERS = (33, 263)  # MediaPipe mesh ids of the outer eye corners: the 300W inter-ocular normaliser
_KEYS = ("image", "landmarks", "landmark_valid")  # what a batch needs; labels and indices stay behind


@dataclass
class AugmentConfig:
    flip_prob: float = 0.5  # mirrored faces are as likely as the originals; ids follow the flip permutation
    max_rotation: float = 10.0  # degrees: in-plane roll left over by 5-point alignment
    scale_jitter: float = 0.05  # relative face-size error of detector-based alignment
    shift_px: float = 3.0  # translation error of alignment, pixels of the image_size crop

    def validate(self) -> None:
        if not 0 <= self.flip_prob <= 1:
            raise ConfigError(f"augment.flip_prob must lie in [0, 1], got {self.flip_prob}")
        if not 0 <= self.max_rotation <= 45:
            raise ConfigError(f"augment.max_rotation must lie in [0, 45] degrees, got {self.max_rotation}")
        if not 0 <= self.scale_jitter < 0.5:
            raise ConfigError(f"augment.scale_jitter must lie in [0, 0.5), got {self.scale_jitter}")
        if self.shift_px < 0:
            raise ConfigError(f"augment.shift_px must be non-negative, got {self.shift_px}")


@dataclass
class LandmarkOptimConfig:
    epochs: int = 60  # a MobileNet from scratch needs tens of epochs to regress landmarks to ~1 px
    batch_size: int = 128  # per step; small CNN, fits easily on one GPU
    lr: float = 1e-3  # AdamW peak LR, a standard value for MobileNets trained from scratch
    min_lr: float = 1e-6  # end of the cosine decay
    warmup_epochs: int = 1  # linear warm-up: fresh BatchNorm statistics are noisy at first
    weight_decay: float = 0.05  # AdamW decay on weights (not on biases and norms)
    clip_grad: float = 5.0  # max gradient norm; 0 turns clipping off

    def validate(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"optim.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"optim.warmup_epochs must lie in [0, optim.epochs], got {self.warmup_epochs}")
        if self.lr <= 0 or self.min_lr < 0 or self.weight_decay < 0 or self.clip_grad < 0:
            raise ConfigError("optim.lr must be > 0 and optim.min_lr, weight_decay, clip_grad >= 0")


@dataclass
class TrainLandmarksConfig:
    output_dir: Path = Path("runs/landmarks")  # config, log, predictor/ and report.json land here
    seed: int = 0  # weights, split, sampling order and augmentation all derive from it
    # A real run names a dataset and its MediaPipe cache; "synthetic" uses the built-in faces and their exact points.
    data: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(path=SYNTHETIC, landmarks="", missing_landmarks="skip")
    )
    synthetic: SyntheticFacesConfig = field(default_factory=SyntheticFacesConfig)  # used when data.path=synthetic
    model: LandmarkPredictorConfig = field(default_factory=LandmarkPredictorConfig)  # LAFS: MobileNetV3-large
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: LandmarkOptimConfig = field(default_factory=LandmarkOptimConfig)
    held_out_fraction: float = 0.05  # identities kept out of training to measure the error on
    loss: Literal["smooth_l1", "l1"] = "smooth_l1"  # robust to the teacher's occasional bad points
    smooth_l1_beta: float = 1.0  # pixels: quadratic below, L1 above (sub-pixel errors are not outliers)
    num_workers: int = 4  # data-loading processes (decoding + warping is the CPU cost)
    device: str = "auto"  # "auto" (cuda if available, else cpu), or a torch device such as cpu, cuda:1
    log_every: int = 50  # optimiser steps between log lines
    eval_every: int = 0  # epochs between held-out evaluations in the log (0 = only at the end)
    max_steps: int | None = None  # stop after this many optimiser steps; the LR schedule still spans all epochs

    def validate(self) -> None:
        for key in ("landmark_set", "image_size"):
            if getattr(self.model, key) != getattr(self.data, key):
                raise ConfigError(
                    f"model.{key} '{getattr(self.model, key)}' must equal data.{key} '{getattr(self.data, key)}': "
                    "the predictor learns the landmarks the data carries"
                )
        if self.data.path != SYNTHETIC and self.data.landmarks in ("", "template", "none"):
            raise ConfigError(
                f"data.landmarks must be a landmark cache folder (python -m tools.landmarks), got "
                f"'{self.data.landmarks}': there is nothing to distil from"
            )
        if not 0 < self.held_out_fraction < 1:
            raise ConfigError(f"held_out_fraction must lie in (0, 1), got {self.held_out_fraction}")
        if self.smooth_l1_beta <= 0:
            raise ConfigError(f"smooth_l1_beta must be > 0, got {self.smooth_l1_beta}")
        if self.num_workers < 0 or self.log_every < 1 or self.eval_every < 0:
            raise ConfigError("num_workers and eval_every must be >= 0, log_every >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        pick_device(self.device)


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else must be a torch device this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: not a torch device: '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}': CUDA is not available on this machine")
    return device


# ------------------------------------------------------------------------------------------------------------ data


def open_faces(cfg: TrainLandmarksConfig) -> tuple[Any, np.ndarray]:
    """The face data set (items with ``image``, ``landmarks``, ``landmark_valid``) and its labels (N,)."""
    if cfg.data.path == SYNTHETIC:
        synthetic = dataclasses.replace(
            cfg.synthetic, landmark_set=cfg.data.landmark_set, image_size=cfg.data.image_size
        )
        faces = SyntheticFaces(synthetic)
        return faces, np.arange(len(faces)) // synthetic.images_per_identity
    options = dataclasses.asdict(cfg.data)
    faces = open_dataset(options.pop("path"), run_dir=cfg.output_dir, **options)
    if len(faces) == 0:
        raise DataError(f"{cfg.data.path}: no image with landmarks in {cfg.data.landmarks} (all skipped)")
    return faces, np.asarray(faces.labels)


def split_by_identity(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, held_out): a seeded ``fraction`` of the identities, at least one, is held out whole.

    With a single identity the split falls back to images (there is no identity to hold out).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    identities = np.unique(labels)
    if len(identities) >= 2:
        count = min(max(1, round(fraction * len(identities))), len(identities) - 1)
        held = np.isin(labels, rng.choice(identities, size=count, replace=False))
    else:
        if len(labels) < 2:
            raise DataError(f"need at least 2 images to hold some out, got {len(labels)}")
        count = min(max(1, round(fraction * len(labels))), len(labels) - 1)
        held = np.zeros(len(labels), dtype=bool)
        held[rng.choice(len(labels), size=count, replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def random_affine(size: int, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """A 2 x 3 map (project coordinates) of a ``size`` crop onto itself: rotate + scale about the centre, shift,
    then maybe a horizontal flip. Draw order is fixed (angle, scale, shift, flip coin)."""
    angle = math.radians(rng.uniform(-aug.max_rotation, aug.max_rotation))
    scale = math.exp(rng.uniform(math.log(1 - aug.scale_jitter), math.log(1 + aug.scale_jitter)))
    shift = rng.uniform(-aug.shift_px, aug.shift_px, size=2)
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array([size / 2, size / 2])  # pixel j spans [j, j + 1): the crop's centre is size / 2
    matrix = np.concatenate([linear, (centre - linear @ centre + shift)[:, None]], axis=1)
    if rng.random() < aug.flip_prob:
        matrix = flip_map(matrix, size)
    return matrix


class LandmarkFaces(Dataset):
    """Items ``positions`` of ``base`` as ``{image, landmarks, landmark_valid}``, augmented when ``augment`` is set.

    Item i of epoch e draws from ``SeedSequence([seed, e, i])``: the same in any worker and order. Call `set_epoch`
    before each epoch's loader iterator is made (workers are not persistent, so they pick it up).
    """

    def __init__(
        self,
        base: Any,
        positions: np.ndarray,
        landmark_set: str,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.base, self.positions, self.augment, self.seed = base, positions, augment, seed
        self.flip_permutation = np.asarray(get_landmark_set(landmark_set).flip_permutation, dtype=np.int64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        item = self.base[int(self.positions[i])]
        image = item["image"]
        landmarks = np.asarray(item["landmarks"], dtype=np.float32)
        valid = np.asarray(item["landmark_valid"], dtype=bool)
        if self.augment is not None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))
            size = image.shape[0]
            matrix = random_affine(size, rng, self.augment)
            image = warp_image(image, matrix, size)
            landmarks, valid = move_landmarks(landmarks, valid, matrix, self.flip_permutation)
        return {"image": image, "landmarks": landmarks, "landmark_valid": valid}


def make_loader(dataset: Dataset, cfg: TrainLandmarksConfig, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > cfg.optim.batch_size,  # no tiny last batch for BatchNorm
        num_workers=cfg.num_workers,
        collate_fn=collate_faces,
        generator=generator,
    )


# ---------------------------------------------------------------------------------------------------------- losses


def landmark_loss(
    predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, kind: str = "smooth_l1", beta: float = 1.0
) -> torch.Tensor:
    """Mean per-coordinate smooth-L1 / L1 in pixels over valid landmarks; predicted, target (B, K, 2), valid (B, K)."""
    if kind == "l1":
        per_coordinate = (predicted - target).abs()
    else:
        per_coordinate = F.smooth_l1_loss(predicted, target, reduction="none", beta=beta)
    mask = valid.to(per_coordinate.dtype).unsqueeze(-1)
    return (per_coordinate * mask).sum() / (2 * mask.sum()).clamp(min=1)


class ErrorMeter:
    """Accumulates mean pixel error (Euclidean distance per valid landmark) and inter-ocular NME per image."""

    def __init__(self, eye_slots: tuple[int, int]) -> None:
        self.eye_slots = eye_slots
        self.distance_sum, self.landmarks, self.nme_sum, self.images = 0.0, 0, 0.0, 0

    def update(self, predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        """predicted, target (B, K, 2) pixels; valid (B, K) bool."""
        distance = torch.linalg.vector_norm(predicted.float() - target.float(), dim=-1) * valid
        self.distance_sum += float(distance.sum())
        self.landmarks += int(valid.sum())
        left, right = self.eye_slots
        interocular = torch.linalg.vector_norm(target[:, left] - target[:, right], dim=-1)
        usable = valid[:, left] & valid[:, right] & (interocular > 1.0) & valid.any(dim=1)
        per_image = distance.sum(dim=1) / valid.sum(dim=1).clamp(min=1) / interocular.clamp(min=1.0)
        self.nme_sum += float(per_image[usable].sum())
        self.images += int(usable.sum())

    def result(self) -> dict[str, float]:
        return {
            "mean_pixel_error": self.distance_sum / max(self.landmarks, 1),
            "nme_interocular": self.nme_sum / max(self.images, 1),
        }


@torch.no_grad()
def evaluate(model: LandmarkPredictor, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Held-out errors of ``model`` and of its template (the untrained predictor), in pixels and as NME."""
    ids = list(get_landmark_set(model.landmark_set).mesh_indices)
    eye_slots = (ids.index(EYE_CORNERS[0]), ids.index(EYE_CORNERS[1]))
    meters = {"predictor": ErrorMeter(eye_slots), "template": ErrorMeter(eye_slots)}
    was_training = model.training
    model.eval()
    images = 0
    for batch in loader:
        target, valid = batch["landmarks"].to(device), batch["landmark_valid"].to(device)
        predicted = model(normalize_images(batch["image"].to(device)))
        meters["predictor"].update(predicted, target, valid)
        meters["template"].update(model.template.expand_as(target), target, valid)
        images += len(target)
    model.train(was_training)
    predictor, template = meters["predictor"].result(), meters["template"].result()
    return {
        **predictor,
        **{f"template_{k}": v for k, v in template.items()},
        "images": images,
        "landmarks": meters["predictor"].landmarks,
    }


# ----------------------------------------------------------------------------------------------------------- train


def train(cfg: TrainLandmarksConfig) -> dict[str, Any]:
    """Run the whole training described by ``cfg``; returns the report (also written to output_dir/report.json)."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    faces, labels = open_faces(cfg)  # bad paths fail here, before anything is written
    save_config(cfg, cfg.output_dir)
    train_positions, held_positions = split_by_identity(labels, cfg.held_out_fraction, cfg.seed)
    train_set = LandmarkFaces(faces, train_positions, cfg.data.landmark_set, cfg.augment, cfg.seed)
    held_set = LandmarkFaces(faces, held_positions, cfg.data.landmark_set)
    train_loader, held_loader = make_loader(train_set, cfg, shuffle=True), make_loader(held_set, cfg, shuffle=False)

    model = build_landmark_predictor(cfg.model).to(device).train()
    groups = param_groups_weight_decay(model, cfg.optim.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.optim.epochs * steps_per_epoch
    last_step = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)
    log = RunLog(cfg.output_dir)
    epoch_losses: list[float] = []
    step, start = 0, time.perf_counter()
    try:
        for epoch in range(cfg.optim.epochs):
            if step >= last_step:
                break
            train_set.set_epoch(epoch)
            loss_sum, batches = 0.0, 0
            for batch in train_loader:
                lr = cosine_schedule(
                    step, total_steps, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_epochs * steps_per_epoch
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = normalize_images(batch["image"].to(device, non_blocking=True))
                target = batch["landmarks"].to(device, non_blocking=True)
                valid = batch["landmark_valid"].to(device, non_blocking=True)
                loss = landmark_loss(model(images), target, valid, cfg.loss, cfg.smooth_l1_beta)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"non-finite landmark loss at step {step + 1}; lower optim.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                optimizer.step()
                step += 1
                loss_sum, batches = loss_sum + float(loss.detach()), batches + 1
                if step % cfg.log_every == 0:
                    log.write(step, {"loss": float(loss.detach()), "lr": lr, "epoch": step / steps_per_epoch})
                if step >= last_step:
                    break
            epoch_losses.append(loss_sum / max(batches, 1))
            if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
                held = evaluate(model, held_loader, device)
                log.write(step, {f"held_out_{k}": float(v) for k, v in held.items()})
    finally:
        log.close()
    seconds = time.perf_counter() - start

    held = evaluate(model, held_loader, device)
    folder = save_landmark_predictor(
        model,
        cfg.output_dir / "predictor",
        source={"stage": "train_landmarks", "data": cfg.data.path, "landmarks": cfg.data.landmarks, "steps": step},
    )
    report = {
        "held_out": held,
        "train": {
            "images": len(train_set),
            "identities": len(np.unique(labels[train_positions])),
            "steps": step,
            "epochs_run": len(epoch_losses),
            "loss_first_epoch": epoch_losses[0] if epoch_losses else None,
            "loss_last_epoch": epoch_losses[-1] if epoch_losses else None,
            "seconds": seconds,
            "images_per_second": step * cfg.optim.batch_size / max(seconds, 1e-9),
            "device": str(device),
        },
        "held_out_identities": len(np.unique(labels[held_positions])),
        "predictor": str(folder),
        "config": config_to_dict(cfg),
    }
    write_atomic(cfg.output_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, TrainLandmarksConfig, description=__doc__.split("\n\n")[0])
    report = train(cfg)
    held, run = report["held_out"], report["train"]
    print(
        f"landmark predictor -> {report['predictor']}: held-out mean error {held['mean_pixel_error']:.2f} px "
        f"(template {held['template_mean_pixel_error']:.2f} px), NME {held['nme_interocular']:.4f} "
        f"(template {held['template_nme_interocular']:.4f}) on {held['images']} images of "
        f"{report['held_out_identities']} identities; {run['steps']} steps in {run['seconds']:.0f} s on {run['device']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
