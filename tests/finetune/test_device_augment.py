"""Batch augmentation on the device for fine-tuning: flips that move landmarks with the image, and mixup."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from finetune.device_augment import AugmentConfig, BatchMixup, random_flip
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.landmarks import get_landmark_set


def test_flip_moves_landmarks_with_the_image():
    item = SyntheticFaces(SyntheticFacesConfig(num_identities=1, images_per_identity=1, landmark_set="mediapipe49"))[0]
    image = torch.from_numpy(item["image"]).permute(2, 0, 1)[None].float()
    landmarks = torch.from_numpy(item["landmarks"])[None].float()
    permutation = torch.tensor(get_landmark_set("mediapipe49").flip_permutation)
    flipped, moved = random_flip(image, landmarks, permutation, probability=1.0)

    def colours(img: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        grid = points * 2 / img.shape[-1] - 1
        return F.grid_sample(img, grid[:, :, None], align_corners=False)[0, :, :, 0]

    assert torch.allclose(colours(flipped, moved), colours(image, landmarks)[:, permutation], atol=1e-3)
    same, unmoved = random_flip(image, landmarks, permutation, probability=0.0)
    assert torch.equal(same, image) and torch.equal(unmoved, landmarks)


def test_mixup_targets_and_dominant_labels():
    torch.manual_seed(0)
    np.random.seed(0)
    mixup = BatchMixup(AugmentConfig(mixup_prob=1.0, mixup_alpha=0.2), num_classes=4)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    landmarks = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    _, soft, dominant, kept = mixup(images, labels, landmarks)
    assert soft is not None and torch.allclose(soft.sum(1), torch.ones(4))
    assert torch.equal(dominant, soft.argmax(1))
    assert torch.equal(kept[:, 0, 0].long(), dominant)  # each image keeps its dominant face's landmarks
    off = BatchMixup(AugmentConfig(mixup_prob=0.0), num_classes=4)
    assert off(images, labels, landmarks)[1] is None
