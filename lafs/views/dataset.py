"""The loader side of worker-rendered views: `PretrainViews` (a face data set seen through `LandmarkViews`) and
`collate_views`, which stacks its items into a batch dict."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lafs.data.epoch import EpochSeeded
from lafs.views.worker import LandmarkViews


class PretrainViews(EpochSeeded):
    """A face data set seen through `LandmarkViews`: item i is its views plus ``label`` and ``index``.

    Item i of epoch e uses ``np.random.default_rng(np.random.SeedSequence([seed, e, i]))`` (`EpochSeeded`), so its
    views are a pure function of (seed, epoch, i), also in loader workers kept alive across epochs.

    Base items are dicts with ``image``, ``landmarks``, optional ``landmark_valid``, ``label`` and ``index``.
    """

    def __init__(self, base: Any, views: LandmarkViews, seed: int = 0) -> None:
        super().__init__(operator.index(seed))
        self.base = base
        self.views = views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        item = self.base[i]
        out: dict[str, Any] = self.views(item["image"], item["landmarks"], self.rng(i), item.get("landmark_valid"))
        out["label"] = item["label"]
        out["index"] = item["index"]
        return out


_IMAGE_KEYS = ("global_images", "local_images")
_ARRAY_KEYS = ("global_landmarks", "global_valid", "local_landmarks", "local_ids", "local_valid")


def collate_views(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack `PretrainViews` items into a batch dict.

    ``global_images`` (B, 2, 3, S, S) and ``local_images`` (B, N, 3, S, S) stay uint8 (channels first);
    ``global_landmarks`` (B, 2, K, 2) float32, ``global_valid`` (B, 2, K) bool, ``local_landmarks`` (B, N, K, 2)
    (each local view's full set), ``local_ids`` (B, N, k) int64, ``local_valid`` (B, N, K) bool, ``label`` and
    ``index`` (B,) int64.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, torch.Tensor] = {}
    for key in _IMAGE_KEYS:
        stacked = torch.from_numpy(np.stack([item[key] for item in items]))
        batch[key] = stacked.permute(0, 1, 4, 2, 3).contiguous()
    for key in _ARRAY_KEYS:
        batch[key] = torch.from_numpy(np.stack([item[key] for item in items]))
    for key in ("label", "index"):
        batch[key] = torch.as_tensor([int(item[key]) for item in items], dtype=torch.int64)
    return batch
