"""Batch augmentation on the accelerator: horizontal flips that move landmarks with the image, and mixup.

Both run on whole batches of tensors after the loader, so worker processes only decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import Mixup

from lafs.errors import ConfigError
from lafs.views.geometry import flip_batch


@dataclass
class AugmentConfig:
    flip: float = 0.5  # horizontal-flip probability per image (arcface_torch and LAFS)
    mixup_prob: float = 0.1  # share of batches mixed (LAFS on WebFace4M; 0.2 on MS1MV3); 0 = off
    mixup_alpha: float = 0.2  # Beta(alpha, alpha) mixing weight (LAFS)

    def validate(self) -> None:
        if not (0 <= self.flip <= 1 and 0 <= self.mixup_prob <= 1) or self.mixup_alpha <= 0:
            raise ConfigError("augment: flip and mixup_prob must lie in [0, 1], mixup_alpha must be > 0")


def random_flip(
    images: torch.Tensor, landmarks: torch.Tensor, flip_permutation: torch.Tensor, probability: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a random share of images (B, C, H, W) with their landmarks (B, K, 2) in pixels.

    `lafs.views.geometry.flip_batch`: a mirrored point lands at ``W - x`` (pixel j spans [j, j + 1)) and
    ``flip_permutation`` (K,) renames slots so each keeps its landmark id (the left eye stays the left eye).
    """
    chosen = torch.rand(images.shape[0], device=images.device) < probability
    images, landmarks, _ = flip_batch(images, landmarks, chosen, flip_permutation)
    return images, landmarks


class BatchMixup:
    """timm's batch mixup (each image mixed with the batch's mirror-order partner) plus what the losses need."""

    def __init__(self, cfg: AugmentConfig, num_classes: int) -> None:
        self.mixup = Mixup(
            mixup_alpha=cfg.mixup_alpha, prob=cfg.mixup_prob, label_smoothing=0.0, num_classes=num_classes
        )

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, landmarks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(images, soft labels (B, C) or None if not mixed, dominant labels (B,), the dominant image's landmarks)."""
        if images.shape[0] % 2:
            raise ConfigError("mixup needs an even optim.batch_size")
        images, soft = self.mixup(images.clone(), labels)
        own_share = soft.gather(1, labels[:, None]).squeeze(1)
        if torch.all(own_share == 1):
            return images, None, labels, landmarks
        partner = torch.arange(labels.shape[0] - 1, -1, -1, device=labels.device)  # timm pairs i with B - 1 - i
        dominant = own_share >= 0.5
        labels = torch.where(dominant, labels, labels[partner])
        landmarks = torch.where(dominant[:, None, None], landmarks, landmarks[partner])
        return images, soft, labels, landmarks
