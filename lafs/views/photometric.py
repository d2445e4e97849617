"""The DINO/LAFS photometric recipe as batched tensor ops, every image with its own parameters; both renderers use it.

torchvision's functional ops take one factor per call, so a batch of views with per-view factors would need one
call per view. These ops take a factor per image (tensor shapes in the docstrings) and follow torchvision's float
formulas (tested against ``torchvision.transforms.v2.functional`` image by image): brightness multiplies, contrast
blends with the image's mean grey level, saturation blends with the grey image, hue rotates H in HSV, grey uses
ITU-R 601 weights, blur is a separable Gaussian with reflect padding, solarize inverts values at or above 0.5.

Images are float (N, 3, H, W) in [0, 1]. The parameters of the recipe are drawn per view by
`lafs.views.draws.draw_photometric` into a (N, `NUM_PARAMS`) table; `apply_photometric` reads that table. The same
code recolours the views rendered in loader workers (on the CPU) and on the accelerator, so both see the same ops.
"""

from __future__ import annotations

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
_CHANNEL_OFFSETS = (5.0, 3.0, 1.0)  # hue-to-RGB closed form: red, green, blue
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


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (N, 3, H, W) images by shift (N,) turns, each in [-0.5, 0.5].

    torchvision's RGB -> HSV -> RGB round trip, without building HSV: the value is the channel maximum and value x
    saturation is the chroma (max - min), and channel c of the rotated colour is ``max - chroma * clamp(min(k, 4 - k),
    0, 1)`` with ``k = (n_c + 6 hue) mod 6``, ``n = (5, 3, 1)`` (the closed form of the six-sector table). Fewer
    passes over the pixels than the table lookup: the hue op is the dearest of the recipe on a CPU.
    """
    red, green, blue = images.unbind(1)
    top = images.amax(1)
    chroma = top - images.amin(1)
    safe = torch.where(chroma > 0, chroma, 1.0)  # greys have hue 0 and chroma 0: avoids 0 / 0
    sector = torch.where(
        top == red,
        (green - blue) / safe,
        torch.where(top == green, 2.0 + (blue - red) / safe, 4.0 + (red - green) / safe),
    )  # 6 x hue, in (-1, 5)
    turns = shift.to(images.dtype).reshape(-1, 1, 1, 1)
    offsets = images.new_tensor(_CHANNEL_OFFSETS).reshape(1, 3, 1, 1) + 6.0 * turns
    k = torch.remainder(sector[:, None] + offsets, 6.0)
    return top[:, None] - chroma[:, None] * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float = MAX_BLUR_SIGMA) -> torch.Tensor:
    """Blur (N, C, H, W) images with sigma (N,) pixels in [0, 2] (clamped there); sigma 0 leaves an image as it is.

    Kernel radius int(3.5 sigma) (albumentations' kernel size for DINO's PIL blur), reflect padding, separable.
    ``max_sigma``, at least every sigma, sizes the filter: a tight bound saves taps that would weigh nothing.
    Weighted sums of shifted slices rather than a grouped convolution: each image has its own kernel, and on a CPU
    a grouped 1-D convolution costs about twice as much.
    """
    height, width = images.shape[-2:]
    pad = int(BLUR_RADIUS_PER_SIGMA * min(max_sigma, MAX_BLUR_SIGMA))
    # A tiny sigma turns the kernel into an exact delta (radius 0), so unblurred images need no mask and no sync.
    sigma = sigma.to(images.dtype).clamp(1e-3, MAX_BLUR_SIGMA).reshape(-1, 1)
    taps = torch.arange(-pad, pad + 1, device=images.device, dtype=images.dtype)
    radius = torch.floor(BLUR_RADIUS_PER_SIGMA * sigma)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2) * (taps.abs() <= radius)  # taps past the radius weigh nothing
    weights = (kernel / kernel.sum(1, keepdim=True)).T[:, :, None, None, None]  # (taps, N, 1, 1, 1)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    rows = _weighted_sum(weights, [padded[..., t : t + width] for t in range(2 * pad + 1)])
    return _weighted_sum(weights, [rows[..., t : t + height, :] for t in range(2 * pad + 1)])


def _weighted_sum(weights: torch.Tensor, slices: list[torch.Tensor]) -> torch.Tensor:
    total = weights[0] * slices[0]
    for weight, part in zip(weights[1:], slices[1:], strict=True):
        total.addcmul_(weight, part)
    return total


def solarize(images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert values at or above ``threshold`` (PIL's solarize at 128 on [0, 1] images)."""
    return torch.where(images >= threshold, 1.0 - images, images)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _apply_selecting(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Every op on the whole batch, each image picking its result with ``torch.where``: no host synchronisation."""
    jittered = params[:, JITTER] > 0
    order = params[:, ORDER].long()
    for stage in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            chosen = jittered & (order[:, stage] == op_index)
            images = _pick(chosen, op(images, params[:, BRIGHTNESS + op_index]), images)
    images = _pick(params[:, GREY] > 0, grey(images).expand(-1, 3, -1, -1), images)
    images = _pick(params[:, SIGMA] > 0, gaussian_blur(images, params[:, SIGMA]), images)
    return _pick(params[:, SOLARIZE] > 0, solarize(images), images)


def _pick(chosen: torch.Tensor, changed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.where(chosen[:, None, None, None], changed, images)


def _apply_each(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Each image through its own ops only, one image at a time (its parameters read on the host)."""
    rows = params.tolist()
    out = torch.empty_like(images)
    for i, row in enumerate(rows):
        image, factors = images[i : i + 1], params[i : i + 1]
        if row[JITTER] > 0:
            for op_index in row[ORDER]:
                column = BRIGHTNESS + int(op_index)
                image = _JITTER_OPS[int(op_index)](image, factors[:, column])
        if row[GREY] > 0:
            image = grey(image).expand(-1, 3, -1, -1)
        if row[SIGMA] > 0:
            image = gaussian_blur(image, factors[:, SIGMA], max_sigma=row[SIGMA])
        if row[SOLARIZE] > 0:
            image = solarize(image)
        out[i] = image[0]
    return out


def apply_photometric(images: torch.Tensor, params: torch.Tensor, select: bool | None = None) -> torch.Tensor:
    """The DINO/LAFS photometric recipe on (N, 3, H, W) images in [0, 1] with per-image params (N, `NUM_PARAMS`).

    Colour jitter's four ops run in each image's own order (torchvision's ColorJitter), then grey, blur, solarize.
    Images an op does not apply to come back unchanged, bit for bit. ``select`` (default: on accelerators, not on
    the CPU) runs every op on the whole batch and selects, which avoids a host-device synchronisation per op at the
    price of computing ops for images they do not apply to; otherwise each image runs only its own ops, which is
    cheapest on a CPU. Both give the same images up to float rounding (the blur's convolution is sized differently).
    """
    if select is None:
        select = images.device.type != "cpu"
    return _apply_selecting(images, params) if select else _apply_each(images, params)
