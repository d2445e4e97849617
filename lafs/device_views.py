"""LAFS views made on the accelerator: loader workers only decode, the device draws, warps and recolours.

`LandmarkViews` (``lafs.augment``) makes every view in the loader workers, so their CPU time grows with the number of
views (7 to 8 ms per image for 2 + 8 views on one core, most of it in colour jitter). With `DeviceViews` the workers
return the decoded face as it is (image, landmarks, label) and the training process, on its accelerator, per batch:

- draws the numbers of all views of all images at once with `lafs.augment.draw_views` (the same function, and so
  the same recipe, as the worker path) from a generator the caller seeds per micro-batch;
- applies the 2 x 3 maps to the landmarks (with the flip id permutation), adds the jitter, gathers local subsets;
- makes every view image with ONE batched ``grid_sample`` of the base image at each view's pixel centres mapped back
  through its map, then runs `lafs.photometric.apply_photometric`.

Given the same numbers, landmark positions equal `LandmarkViews.render`'s (tested). Images differ slightly, by design:
they are interpolated once in float (no uint8 rounding between ops, and bilinear weights are not quantised to 1/32
pixel as OpenCV's are), and colour jitter, grey, blur and solarize follow torchvision's formulas (DINO's reference
implementation) with parameters from `draw_views` instead of albumentations'. Views depend on the micro-batch's
seed, not on (seed, epoch, index) per image as `PretrainViews`' do.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from lafs.augment import NUM_GLOBAL, ViewConfig, ViewDraws, draw_views
from lafs.data.collate import PIXEL_MEAN, PIXEL_STD
from lafs.landmarks.sets import get_landmark_set
from lafs.photometric import apply_photometric


class DeviceViews:
    """LAFS views of whole batches on their device (see the module docstring)."""

    def __init__(self, cfg: ViewConfig, landmark_set: str) -> None:
        cfg.validate()
        self.cfg = cfg
        self.landmark_set = get_landmark_set(landmark_set)
        self.flip_permutation = torch.tensor(np.asarray(self.landmark_set.flip_permutation), dtype=torch.int64)

    def __call__(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Views of a collated face batch (see `render`), numbers drawn from ``generator`` (on the batch's device)."""
        height, width = batch["image"].shape[-2:]
        draws = draw_views(self.cfg, self.landmark_set.num_landmarks, (height, width), len(batch["image"]), generator)
        return self.render(batch, draws)

    def render(self, batch: Mapping[str, torch.Tensor], draws: ViewDraws) -> dict[str, torch.Tensor]:
        """The views of a face batch given their numbers, in the layout of `lafs.augment.collate_views`.

        ``batch`` holds ``image`` (B, 3, H, W) uint8, ``landmarks`` (B, K, 2), optional ``landmark_valid`` (B, K),
        ``label`` and ``index`` (B,), all on one device (``lafs.data.collate.collate_faces`` of the base items).

        Returns ``global_images`` (B, 2, 3, S, S) and ``local_images`` (B, N, 3, S, S) as float normalised to
        [-1, 1], ``global_landmarks`` (B, 2, K, 2), ``global_valid`` (B, 2, K), ``local_landmarks`` (B, N, k, 2),
        ``local_ids`` (B, N, k), ``local_valid`` (B, N, k), and the batch's ``label`` and ``index``.
        """
        maps = draws.maps.float()
        linear, shift = maps[..., :2], maps[..., 2]
        inverse, det = _invert(linear)
        flipped = det < 0  # (B, V): mirrored views swap left/right landmark ids
        permutation = self.flip_permutation.to(maps.device)

        points = torch.einsum("bvij,bkj->bvki", linear, batch["landmarks"].float()) + shift[:, :, None, :]
        points = torch.where(flipped[..., None, None], points[:, :, permutation], points) + draws.jitter
        valid = batch.get("landmark_valid")
        if valid is None:
            valid = torch.ones(points.shape[0], points.shape[2], dtype=torch.bool, device=points.device)
        valid = valid[:, None, :].expand(-1, maps.shape[1], -1)
        valid = torch.where(flipped[..., None], valid[:, :, permutation], valid)

        ids = draws.local_ids
        local_points = points[:, NUM_GLOBAL:]
        out = {
            "global_landmarks": points[:, :NUM_GLOBAL],
            "global_valid": valid[:, :NUM_GLOBAL],
            "local_landmarks": torch.gather(local_points, 2, ids[..., None].expand(-1, -1, -1, 2)),
            "local_ids": ids,
            "local_valid": torch.gather(valid[:, NUM_GLOBAL:], 2, ids),
            "label": batch["label"],
            "index": batch["index"],
        }
        images = self._warp(batch["image"], inverse, shift)
        images = apply_photometric(images.flatten(0, 1), draws.photometric.flatten(0, 1).float())
        images = ((images - PIXEL_MEAN) / PIXEL_STD).unflatten(0, maps.shape[:2])
        out["global_images"], out["local_images"] = images[:, :NUM_GLOBAL], images[:, NUM_GLOBAL:]
        return out

    def _warp(self, images: torch.Tensor, inverse: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float (B, V, 3, S, S) in [0, 1]: view pixel centres sampled through inverse maps."""
        size = self.cfg.image_size
        batch, _, height, width = images.shape
        views = inverse.shape[1]
        centres = torch.arange(size, device=images.device, dtype=torch.float32) + 0.5
        grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
        targets = torch.stack((grid_x, grid_y), -1)  # (S, S, 2) view pixel centres as (x, y)
        sources = torch.einsum("bvij,hwj->bvhwi", inverse, targets)
        sources = sources - torch.einsum("bvij,bvj->bvi", inverse, shift)[:, :, None, None, :]
        # Project pixel x maps to 2x / W - 1 with align_corners=False (see lafs.models.tokenizer).
        grid = sources * sources.new_tensor([2.0 / width, 2.0 / height]) - 1.0
        # All views of an image stacked along the output height: one grid_sample, no copies of the base image.
        pixels = images.float() / 255.0
        sampled = F.grid_sample(
            pixels,
            grid.reshape(batch, views * size, size, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        return sampled.unflatten(2, (views, size)).transpose(1, 2)


def _invert(linear: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverses and determinants of (..., 2, 2) matrices, in closed form (no batched LAPACK call per step)."""
    (a, b), (c, d) = linear.unbind(-2)[0].unbind(-1), linear.unbind(-2)[1].unbind(-1)
    det = a * d - b * c
    inverse = torch.stack((torch.stack((d, -b), -1), torch.stack((-c, a), -1)), -2) / det[..., None, None]
    return inverse, det
