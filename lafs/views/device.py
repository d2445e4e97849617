"""`DeviceViews`: LAFS views of whole batches rendered on the training device; loader workers only decode.

Per batch, on its device: `draw_views` for all views of all images at once (a generator the caller seeds per
micro-batch), then `render_views` (the renderer loader workers use too) and normalisation to [-1, 1]. Given the same
draws, landmarks equal `LandmarkViews.render`'s exactly and pixels agree up to its uint8 rounding (tested).
Views depend on the micro-batch's seed, not on (seed, epoch, index) per image as `PretrainViews`' do.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lafs.data.collate import PIXEL_MEAN, PIXEL_STD
from lafs.views.config import ViewConfig
from lafs.views.draws import ViewDraws, draw_views
from lafs.views.patches import check_view_set
from lafs.views.render import render_views


class DeviceViews:
    """LAFS views of whole batches on their device (see the module docstring)."""

    def __init__(self, cfg: ViewConfig, landmark_set: str) -> None:
        cfg.validate()
        self.cfg = cfg
        self.landmark_set = check_view_set(cfg, landmark_set)

    def __call__(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Views of a collated face batch (see `render`), numbers drawn from ``generator`` (on the batch's device)."""
        height, width = batch["image"].shape[-2:]
        draws = draw_views(self.cfg, self.landmark_set.num_landmarks, (height, width), len(batch["image"]), generator)
        return self.render(batch, draws)

    def render(self, batch: Mapping[str, torch.Tensor], draws: ViewDraws) -> dict[str, torch.Tensor]:
        """The views of a face batch given their numbers, in the layout of `collate_views`.

        ``batch`` holds ``image`` (B, 3, H, W) uint8, ``landmarks`` (B, K, 2), optional ``landmark_valid`` (B, K),
        ``label`` and ``index`` (B,), all on one device (``lafs.data.collate.collate_faces`` of the base items).

        Returns ``global_images`` (B, 2, 3, S, S) and ``local_images`` (B, N, 3, s, s) as float normalised to
        [-1, 1], ``global_landmarks`` (B, 2, K, 2), ``global_valid`` (B, 2, K), ``local_landmarks`` (B, N, K, 2),
        ``local_ids`` (B, N, k), ``local_valid`` (B, N, K), and the batch's ``label`` and ``index``.
        """
        landmarks = batch["landmarks"]
        valid = batch.get("landmark_valid")
        if valid is None:
            valid = torch.ones(landmarks.shape[:2], dtype=torch.bool, device=landmarks.device)
        out = render_views(batch["image"], landmarks, valid, draws, self.cfg, self.landmark_set)
        for key in ("global_images", "local_images"):
            out[key] = (out[key] - PIXEL_MEAN) / PIXEL_STD
        out["label"], out["index"] = batch["label"], batch["index"]
        return out
