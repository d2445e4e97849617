"""Distilling a learned landmark predictor from a landmark cache: data, augmentation, loss and held-out errors.

The training stage itself is `lafs.tasks.landmarks.LandmarkTask` (run by `lafs.engine.fit`); this module holds what
it is made of:

- `split_by_identity`: a seeded share of the identities held out whole, to measure the error on unseen people;
- `LandmarkFaces` with `random_affine`: image and landmarks moved together by one 2 x 3 map (rotation, scale,
  shift, maybe a horizontal flip that swaps left/right landmark ids through the set's flip permutation);
- `landmark_loss`: smooth-L1 (or L1) in pixels over valid landmarks;
- `ErrorMeter` and `evaluate`: mean pixel error and inter-ocular NME of a predictor and of its template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lafs.data.collate import normalize_images
from lafs.data.epoch import EpochSeeded
from lafs.errors import ConfigError, DataError
from lafs.landmarks.align import warp_image
from lafs.landmarks.sets import get_landmark_set
from lafs.models.landmark_predictor import LandmarkPredictor
from lafs.views.geometry import flip_map, move_landmarks

EYE_CORNERS = (33, 263)  # MediaPipe mesh ids of the outer eye corners: the 300W inter-ocular normaliser


@dataclass
class DistillAugmentConfig:
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


# ------------------------------------------------------------------------------------------------------------ data


def split_by_identity(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, held_out) into ``labels`` (N,): a seeded ``fraction`` of the identities, at least one, is
    held out whole. With a single identity the split falls back to images (there is no identity to hold out)."""
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


def random_affine(size: int, rng: np.random.Generator, aug: DistillAugmentConfig) -> np.ndarray:
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


class LandmarkFaces(EpochSeeded):
    """Items ``positions`` of ``base`` as ``{image (H, W, 3) uint8, landmarks (K, 2) float32, landmark_valid (K,)}``,
    augmented when ``augment`` is set.

    Item i of epoch e draws from ``SeedSequence([seed, e, i])`` (`EpochSeeded`): the same in any worker, order or
    resumed run.
    """

    def __init__(
        self,
        base: Any,
        positions: np.ndarray,
        landmark_set: str,
        augment: DistillAugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.base, self.positions, self.augment = base, positions, augment
        self.flip_permutation = np.array(get_landmark_set(landmark_set).flip_permutation, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        item = self.base[int(self.positions[i])]
        image = item["image"]
        landmarks = np.asarray(item["landmarks"], dtype=np.float32)
        valid = np.asarray(item["landmark_valid"], dtype=bool)
        if self.augment is not None:
            rng = self.rng(i)
            size = image.shape[0]
            matrix = random_affine(size, rng, self.augment)
            image = warp_image(image, matrix, size)
            landmarks, valid = move_landmarks(landmarks, valid, matrix, self.flip_permutation)
        return {"image": image, "landmarks": landmarks, "landmark_valid": valid}


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
def evaluate(model: LandmarkPredictor, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Held-out errors of ``model`` and of its template (the untrained predictor), in pixels and as NME.

    ``loader`` yields batches of `LandmarkFaces` items; the model's train/eval mode is restored afterwards.
    """
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
