"""Batches as dicts of tensors (lafs.data.collate): uint8 channels-first images, fields stacked, pixels to [-1, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs.data.collate import collate_faces, normalize_images


def test_images_stay_uint8_channels_first_and_other_fields_stack() -> None:
    items = [
        {"image": np.full((4, 5, 3), i, np.uint8), "label": i, "landmarks": np.full((2, 2), i, np.float32)}
        for i in range(3)
    ]
    batch = collate_faces(items)
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, 4, 5)
    assert batch["image"].is_contiguous() and batch["image"][2, 1, 3, 4] == 2
    assert batch["label"].tolist() == [0, 1, 2] and batch["label"].dtype == torch.int64
    assert batch["landmarks"].shape == (3, 2, 2) and batch["landmarks"].dtype == torch.float32


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate_faces([])


def test_pixels_map_to_minus_one_one() -> None:
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).reshape(1, 3, 1, 1)
    assert normalize_images(images).flatten().tolist() == pytest.approx([-1.0, 1.0, -0.6])
    assert normalize_images(images, torch.float64).dtype == torch.float64
