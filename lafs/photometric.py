"""Batched photometric augmentation on the accelerator: every image of a batch gets its own parameters.

torchvision's functional ops take one factor per call, so a batch of views with per-view factors would need one
call per view. These ops take a factor per image (tensor shapes in the docstrings) and follow torchvision's float
formulas (tested against ``torchvision.transforms.v2.functional`` image by image): brightness multiplies, contrast
blends with the image's mean grey level, saturation blends with the grey image, hue rotates H in HSV, grey uses
ITU-R 601 weights, blur is a separable Gaussian with reflect padding, solarize inverts values at or above 0.5.

Images are float (N, 3, H, W) in [0, 1]. The parameters of the DINO/LAFS recipe are drawn per view by
`lafs.augment.draw_photometric` into a (N, `NUM_PARAMS`) table; `apply_photometric` reads that table.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
BLUR_RADIUS_PER_SIGMA = 3.5  # PIL / albumentations kernel size: int(3.5 sigma) * 2 + 1
MAX_BLUR_SIGMA = 2.0  # DINO's sigma range ends here; it bounds the padded kernel

# Columns of the per-view parameter table.
JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(5)
ORDER = slice(5, 9)  # the order of the four colour-jitter ops (a permutation of 0..3, op k = column k + 1)
GREY, SIGMA, SOLARIZE = 9, 10, 11  # grey and solarize flags, and the blur sigma (0 = no blur)
NUM_PARAMS = 12
IDENTITY = (0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0)


def _per_image(factor: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return factor.to(images.dtype).reshape(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    ratio = _per_image(factor, images)
    return (ratio * images + (1.0 - ratio) * other).clamp(0.0, 1.0)


def grey(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) grey levels."""
    weights = images.new_tensor(GREY_WEIGHTS).reshape(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale (N, 3, H, W) images by factor (N,)."""
    return (images * _per_image(factor, images)).clamp(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend (N, 3, H, W) images with their mean grey level by factor (N,)."""
    return _blend(images, grey(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend (N, 3, H, W) images with their grey version by factor (N,)."""
    return _blend(images, grey(images), factor)


def _rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    red, green, blue = images.unbind(1)
    top = images.amax(1)
    bottom = images.amin(1)
    flat = top == bottom
    spread = top - bottom
    ones = torch.ones_like(top)
    saturation = spread / torch.where(flat, ones, top)
    spread = torch.where(flat, ones, spread)  # hue is 0 for greys; avoids 0 / 0
    r, g, b = ((top - c) / spread for c in (red, green, blue))
    hue = torch.where(top == red, b - g, torch.where(top == green, 2.0 + r - b, 4.0 + g - r))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack((hue, saturation, top), 1)


# Which of (v, q, p, t) is R, G, B in each of the six hue sectors.
_SECTOR_TABLE = ((0, 1, 2, 2, 3, 0), (3, 0, 0, 1, 2, 2), (2, 2, 3, 0, 0, 1))


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(1)
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.long() % 6
    p = (value * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (value * (1.0 - saturation * fraction)).clamp(0.0, 1.0)
    t = (value * (1.0 - saturation * (1.0 - fraction))).clamp(0.0, 1.0)
    candidates = torch.stack((value, q, p, t), 1)  # (N, 4, H, W)
    table = torch.tensor(_SECTOR_TABLE, device=hsv.device)  # (3 channels, 6 sectors)
    pick = table[:, sector].movedim(0, 1)  # (N, 3, H, W): which candidate each channel takes
    return torch.gather(candidates, 1, pick)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (N, 3, H, W) images by shift (N,) turns, each in [-0.5, 0.5]."""
    hsv = _rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0] + shift.to(images.dtype).reshape(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.cat((hue[:, None], hsv[:, 1:]), 1))


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur (N, C, H, W) images with sigma (N,) pixels in [0, 2] (clamped there); sigma 0 leaves an image as it is.

    Kernel radius int(3.5 sigma) (albumentations' kernel size for DINO's PIL blur), reflect padding, separable.
    """
    count, channels, height, width = images.shape
    pad = int(BLUR_RADIUS_PER_SIGMA * MAX_BLUR_SIGMA)
    # A tiny sigma turns the kernel into an exact delta (radius 0), so unblurred images need no mask and no sync.
    sigma = sigma.to(images.dtype).clamp(1e-3, MAX_BLUR_SIGMA).reshape(-1, 1)
    taps = torch.arange(-pad, pad + 1, device=images.device, dtype=images.dtype)
    radius = torch.floor(BLUR_RADIUS_PER_SIGMA * sigma)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2) * (taps.abs() <= radius)  # taps past the radius weigh nothing
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (N * C, taps)
    flat = F.pad(images.reshape(1, count * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=count * channels)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=count * channels)
    return flat.reshape(count, channels, height, width)


def solarize(images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert values at or above ``threshold`` (PIL's solarize at 128 on [0, 1] images)."""
    return torch.where(images >= threshold, 1.0 - images, images)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _apply(
    images: torch.Tensor, chosen: torch.Tensor, select: bool, op: Callable[..., torch.Tensor], *args: torch.Tensor
) -> torch.Tensor:
    """``op`` (images, *args) on the images where ``chosen`` (N,) is true; the others are returned unchanged.

    ``select``: run ``op`` on the whole batch and pick with ``torch.where`` (no host synchronisation), else run it on
    the chosen rows only (which needs their count on the host).
    """
    if select:
        return torch.where(chosen[:, None, None, None], op(images, *args), images)
    index = chosen.nonzero().squeeze(1)
    if index.numel() == 0:
        return images
    return images.index_copy(0, index, op(images[index], *(a[index] for a in args)))


def apply_photometric(images: torch.Tensor, params: torch.Tensor, select: bool | None = None) -> torch.Tensor:
    """The DINO/LAFS photometric recipe on (N, 3, H, W) images in [0, 1] with per-image params (N, `NUM_PARAMS`).

    Colour jitter's four ops run in each image's own order (torchvision's ColorJitter), then grey, blur, solarize.
    Images an op does not apply to come back unchanged, bit for bit. ``select`` (default: on accelerators, not on
    the CPU) runs every op on the whole batch and selects, which avoids a host-device synchronisation per op at the
    price of computing ops for images they do not apply to; the results are the same either way.
    """
    if select is None:
        select = images.device.type != "cpu"
    jittered = params[:, JITTER] > 0
    order = params[:, ORDER].long()
    for stage in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            chosen = jittered & (order[:, stage] == op_index)
            images = _apply(images, chosen, select, op, params[:, BRIGHTNESS + op_index])
    images = _apply(images, params[:, GREY] > 0, select, lambda x: grey(x).expand(-1, 3, -1, -1))
    images = _apply(images, params[:, SIGMA] > 0, select, gaussian_blur, params[:, SIGMA])
    return _apply(images, params[:, SOLARIZE] > 0, select, solarize)
