"""The one view renderer: landmarks, pixel warp and photometry of every view, given the draws.

Both places that make views call `render_views`: `DeviceViews` on the training device, a batch at a time, and
`LandmarkViews` in a loader worker, one image at a time (on a CPU-only machine). So a CPU run and a GPU run see views
made by the same code: landmarks are exactly equal whatever the batch size, and pixels equal up to float rounding
(the worker then rounds to uint8 for the trip to the training process). A second, OpenCV warp for the workers was
measured and dropped: it saves about 2 ms of a worker's 14 ms per image (BENCHMARKS.md, data pipeline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lafs.landmarks.sets import LandmarkSet
from lafs.views.config import NUM_GLOBAL, ViewConfig
from lafs.views.draws import ViewDraws
from lafs.views.geometry import invert_linear, map_landmarks
from lafs.views.patches import grid_view_landmarks
from lafs.views.photometric import apply_photometric


def render_views(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    valid: torch.Tensor,
    draws: ViewDraws,
    cfg: ViewConfig,
    landmark_set: LandmarkSet,
) -> dict[str, torch.Tensor]:
    """Views of uint8 images (B, 3, H, W) with landmarks (B, K, 2) and mask (B, K), on the draws' device.

    Returns ``global_images`` (B, 2, 3, S, S) and ``local_images`` (B, N, 3, s, s) as float in [0, 1], and the
    landmark outputs of `view_landmarks` (``cfg.kind`` landmarks) or of `lafs.views.patches.grid_view_landmarks`
    (patches: the images' landmarks are not used).
    """
    if cfg.kind == "patches":
        out = grid_view_landmarks(draws, landmark_set, cfg.local_side)
    else:
        permutation = torch.tensor(landmark_set.flip_permutation, dtype=torch.int64)
        out = view_landmarks(landmarks, valid, draws, permutation)
    if cfg.local_side == cfg.image_size:  # every view at one side: one warp and one photometric pass
        pixels = _pixels(images, draws.maps, draws.photometric, cfg.image_size)
        out["global_images"], out["local_images"] = pixels[:, :NUM_GLOBAL], pixels[:, NUM_GLOBAL:]
    else:
        for name, views, size in (
            ("global", slice(NUM_GLOBAL), cfg.image_size),
            ("local", slice(NUM_GLOBAL, None), cfg.local_side),
        ):
            out[f"{name}_images"] = _pixels(images, draws.maps[:, views], draws.photometric[:, views], size)
    return out


def _pixels(images: torch.Tensor, maps: torch.Tensor, photometric: torch.Tensor, size: int) -> torch.Tensor:
    """Warped and recoloured views (B, V, 3, size, size) of images (B, 3, H, W) under maps (B, V, 2, 3)."""
    pixels = warp_views(images, maps, size)
    return apply_photometric(pixels.flatten(0, 1), photometric.flatten(0, 1)).unflatten(0, pixels.shape[:2])


def view_landmarks(
    landmarks: torch.Tensor, valid: torch.Tensor, draws: ViewDraws, permutation: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The landmark outputs of the views of images with landmarks (B, K, 2) and mask (B, K).

    Moved by each view's map (sides swapped on mirrored views), then jittered. Every view keeps its full set of K
    points, local views too: the encoder fits its token geometry over a view's whole set before it takes the view's
    ids (a repeated id repeats the same jittered point). Returns ``global_landmarks`` (B, 2, K, 2), ``global_valid``
    (B, 2, K), ``local_landmarks`` (B, N, K, 2), ``local_valid`` (B, N, K) and ``local_ids`` (B, N, k).
    """
    points, mask = map_landmarks(draws.maps, landmarks, valid, permutation)
    points = points + draws.jitter
    return {
        "global_landmarks": points[:, :NUM_GLOBAL],
        "global_valid": mask[:, :NUM_GLOBAL],
        "local_landmarks": points[:, NUM_GLOBAL:],
        "local_ids": draws.local_ids,
        "local_valid": mask[:, NUM_GLOBAL:],
    }


def warp_views(images: torch.Tensor, maps: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> float views (B, V, 3, S, S) in [0, 1] under maps (B, V, 2, 3).

    Each view pixel's centre is mapped back through its inverse map and sampled bilinearly (zeros outside), in float,
    all views of a batch in one ``grid_sample``.
    """
    batch, _, height, width = images.shape
    views = maps.shape[1]
    maps = maps.float()
    inverse, _ = invert_linear(maps[..., :2])
    centres = torch.arange(size, device=images.device, dtype=torch.float32) + 0.5
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    targets = torch.stack((grid_x, grid_y), -1)  # (S, S, 2) view pixel centres as (x, y)
    sources = torch.einsum("bvij,hwj->bvhwi", inverse, targets)
    sources = sources - torch.einsum("bvij,bvj->bvi", inverse, maps[..., 2])[:, :, None, None, :]
    # Project pixel x maps to 2x / W - 1 with align_corners=False (see lafs.models.tokenizer).
    grid = sources * sources.new_tensor([2.0 / width, 2.0 / height]) - 1.0
    # All views of an image stacked along the output height: one grid_sample, no copies of the base image.
    sampled = F.grid_sample(
        images.float() / 255.0,
        grid.reshape(batch, views * size, size, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return sampled.unflatten(2, (views, size)).transpose(1, 2)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] -> uint8 in [0, 255], rounded to nearest."""
    return images.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
