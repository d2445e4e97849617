"""Batches as dicts of tensors, and the pixel normalisation every encoder input goes through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# LAFS and insightface feed pixels scaled to [-1, 1].
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def collate_faces(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack sample dicts into a batch dict.

    Images (H x W x 3 uint8) become (batch, 3, H, W) uint8, so they cross to the accelerator at a quarter of the
    float size; every other numpy or numeric field is stacked as it is.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "image":
            batch[key] = torch.from_numpy(np.stack(values)).permute(0, 3, 1, 2).contiguous()
        else:
            batch[key] = torch.as_tensor(np.stack(values) if isinstance(values[0], np.ndarray) else values)
    return batch


def normalize_images(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (batch, 3, H, W) in [0, 255] -> ``dtype`` in [-1, 1]."""
    return (images.to(dtype) / 255.0 - PIXEL_MEAN) / PIXEL_STD
