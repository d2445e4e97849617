"""The random numbers of every view: crop boxes, flips, landmark jitter, local ids and photometric parameters.

A dozen vectorised torch draws per call, whatever the number of images and views, on the generator's device. Both
renderers take their numbers from `draw_views`: the loader-worker one draws per image (a count of 1), the device one
per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lafs.views.config import BLUR_SIGMA, COLOR_JITTER, NUM_GLOBAL, ViewConfig
from lafs.views.geometry import view_maps
from lafs.views.photometric import BRIGHTNESS, GREY, HUE, IDENTITY, JITTER, ORDER, SIGMA, SOLARIZE


@dataclass
class ViewDraws:
    """The random numbers of the V = 2 + N views of a batch of B images, globals first (see `draw_views`)."""

    maps: torch.Tensor  # (B, V, 2, 3) image-to-view maps: crop box -> S x S (locals: s x s), then maybe a flip
    jitter: torch.Tensor  # (B, V, K, 2) landmark jitter in view pixels (landmarks kind)
    local_ids: torch.Tensor  # (B, N, k) int64 landmark ids of the local views (landmarks kind)
    photometric: torch.Tensor  # (B, V, NUM_PARAMS) per-view parameters of `lafs.views.photometric`


def _uniform(
    low: torch.Tensor | float, high: torch.Tensor | float, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def sample_crop_boxes(
    height: int, width: int, scale: torch.Tensor, ratio: Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """RandomResizedCrop boxes ``(x0, y0, w, h)`` (..., 4) in project pixels of an ``height x width`` image.

    ``scale`` (..., 2) holds each box's (low, high) area-fraction range. torchvision's sampler, vectorised: per box,
    the first of 10 tries of area fraction ~ U(scale) and log aspect ~ U(log ratio) that fits, else a centre crop
    clamped to the ratio range; boxes are continuous rather than whole-pixel, since the warp is continuous.
    """
    shape = (*scale.shape[:-1], 10)
    target = height * width * _uniform(scale[..., :1], scale[..., 1:], shape, generator)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), shape, generator))
    w, h = torch.sqrt(target * aspect), torch.sqrt(target / aspect)
    fits = (w <= width * (1 + 1e-6)) & (h <= height * (1 + 1e-6))
    first = fits.to(torch.uint8).argmax(-1, keepdim=True)  # the first try that fits (0 when none does)
    found = fits.any(-1)
    w = torch.gather(w, -1, first).squeeze(-1).clamp(max=width)
    h = torch.gather(h, -1, first).squeeze(-1).clamp(max=height)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback = (float(width), width / ratio[0])
    elif in_ratio > ratio[1]:
        fallback = (height * ratio[1], float(height))
    else:
        fallback = (float(width), float(height))
    w, h = torch.where(found, w, fallback[0]), torch.where(found, h, fallback[1])
    where = torch.rand((*found.shape, 2), generator=generator, device=generator.device)
    where = torch.where(found[..., None], where, 0.5)  # the fallback is centred
    return torch.stack([where[..., 0] * (width - w), where[..., 1] * (height - h), w, h], -1)


def draw_views(
    cfg: ViewConfig, num_landmarks: int, size_in: tuple[int, int], count: int, generator: torch.Generator
) -> ViewDraws:
    """The random numbers of every view of ``count`` images of ``size_in = (height, width)``, on the generator's device.

    The draws come in a fixed order (crop boxes, flips, jitter, local ids, photometric parameters) whatever the
    options, so switching photometry or jitter off leaves every other number unchanged. Patches views
    (``cfg.kind``) draw the jitter and ids too, and leave them unused: their tokens sit on each view's grid.
    """
    device = generator.device
    height, width = size_in
    views = NUM_GLOBAL + cfg.num_local
    scale = torch.tensor([cfg.global_scale] * NUM_GLOBAL + [cfg.local_crop_scale] * cfg.num_local, device=device)
    boxes = sample_crop_boxes(height, width, scale.expand(count, views, 2), cfg.ratio, generator)
    flips = torch.rand((count, views), generator=generator, device=device) < cfg.flip_prob
    jitter = torch.randn((count, views, num_landmarks, 2), generator=generator, device=device) * cfg.jitter_std
    local_ids = torch.randint(
        num_landmarks, (count, cfg.num_local, cfg.local_landmarks), generator=generator, device=device
    )
    photometric = draw_photometric(cfg, count, generator)
    maps = torch.cat(  # globals onto S x S, locals onto their own side s
        [
            view_maps(boxes[:, :NUM_GLOBAL], flips[:, :NUM_GLOBAL], cfg.image_size),
            view_maps(boxes[:, NUM_GLOBAL:], flips[:, NUM_GLOBAL:], cfg.local_side),
        ],
        1,
    )
    return ViewDraws(maps, jitter, local_ids, photometric)


def draw_photometric(cfg: ViewConfig, count: int, generator: torch.Generator) -> torch.Tensor:
    """Per-view parameters (count, V, `NUM_PARAMS`) of the DINO/LAFS photometric recipe for `apply_photometric`.

    Views 0 and 1 are the globals (blur p ``blur_prob[0]`` / ``[1]``, only view 1 may be solarised), then locals.
    """
    device = generator.device
    views = NUM_GLOBAL + cfg.num_local
    shape = (count, views)
    coins = torch.rand((*shape, 4), generator=generator, device=device)  # colour jitter, grey, blur, solarize
    strength = torch.tensor(COLOR_JITTER, device=device)
    low = torch.cat([1 - strength[:3], -strength[3:]])
    factors = _uniform(low, torch.cat([1 + strength[:3], strength[3:]]), (*shape, 4), generator)
    order = torch.rand((*shape, 4), generator=generator, device=device).argsort(-1)  # a random permutation per view
    sigma = _uniform(BLUR_SIGMA[0], BLUR_SIGMA[1], shape, generator)
    params = torch.tensor(IDENTITY, device=device).expand(*shape, -1).clone()
    if not cfg.photometric:
        return params
    jittered = coins[..., 0] < cfg.color_jitter_prob
    params[..., JITTER] = jittered.float()
    params[..., BRIGHTNESS : HUE + 1] = torch.where(jittered[..., None], factors, params[..., BRIGHTNESS : HUE + 1])
    params[..., ORDER] = torch.where(jittered[..., None], order.float(), params[..., ORDER])
    params[..., GREY] = (coins[..., 1] < cfg.grayscale_prob).float()
    blur = tuple(cfg.blur_prob)
    blur_prob = torch.tensor(blur[:NUM_GLOBAL] + blur[NUM_GLOBAL:] * cfg.num_local, device=device)
    params[..., SIGMA] = torch.where(coins[..., 2] < blur_prob, sigma, 0.0)
    second_global = torch.arange(views, device=device) == 1  # DINO solarises the second global view only
    params[..., SOLARIZE] = ((coins[..., 3] < cfg.solarize_prob) & second_global).float()
    return params
