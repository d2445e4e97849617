"""The released LAFS fine-tuning's RandAugment (util/rand_aa_face.py, ``rand-m{M}-mstd0.5-inc1``) on whole batches.

The released face variant is timm's RandAugment with the "increasing" op set minus both solarize ops: per image, two
ops drawn uniformly with replacement from the 13 below, each applied with probability 0.5 at magnitude
``N(M, 0.5)`` clipped to [0, 10] (LAFS: M = 1 on WebFace4M, 2 on MS1MV3). Every op with a strength applies it with a
random sign. Here the numbers are drawn per image as tensors (`draw_randaugment`); the geometric ops become one 3 x 3
map per image (`geometric_maps`), composed with the other warps of the batch by the caller, and the colour ops run
on float images in [0, 1] (`apply_colour_ops`), each op on the images that take it.

Geometric strengths (timm's): rotation 30 degrees about the image centre, shear 0.3 (about the top-left corner, as
PIL's affine), translation 0.45 of the side, all times magnitude / 10; uncovered pixels take the fill grey 128.
Colour ops follow PIL's ImageOps / ImageEnhance: autocontrast, equalize, invert, posterize to ``4 - int(0.4 M)`` bits,
and colour (saturation), contrast, brightness and sharpness with factor ``1 +- 0.09 M``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

from lafs.views.photometric import adjust_brightness, adjust_contrast, adjust_saturation

# The released op list (timm's _RAND_INCREASING_TRANSFORMS without SolarizeIncreasing and SolarizeAdd), in its order.
OPS = (
    "auto_contrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
NUM_LAYERS = 2  # ops per image (timm's default num_layers)
OP_PROB = 0.5  # each drawn op is applied with this probability (timm's rand_augment_ops)
MAGNITUDE_STD = 0.5  # "mstd0.5": per-op Gaussian noise on the magnitude
MAX_LEVEL = 10.0  # magnitudes are clipped to [0, MAX_LEVEL] and read as level = magnitude / MAX_LEVEL
FILL = 128 / 255  # timm's fill colour (128, 128, 128) for pixels a geometric op uncovers
MAX_ROTATION_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45  # fraction of the image side (timm's translate_pct)
MAX_ENHANCE = 0.9  # colour / contrast / brightness / sharpness factors 1 +- 0.9 level


# Each colour op as f(images (N, 3, H, W), factor (N,), bits (N,)): the enhance factor 1 +- 0.9 level and the
# posterize bit count of each image.
COLOUR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "auto_contrast": lambda images, factor, bits: TF.autocontrast(images),
    "equalize": lambda images, factor, bits: TF.equalize(images),
    "invert": lambda images, factor, bits: TF.invert(images),
    "posterize": lambda images, factor, bits: posterize(images, bits),
    "color": lambda images, factor, bits: adjust_saturation(images, factor),
    "contrast": lambda images, factor, bits: adjust_contrast(images, factor),
    "brightness": lambda images, factor, bits: adjust_brightness(images, factor),
    "sharpness": lambda images, factor, bits: adjust_sharpness(images, factor),
}


@dataclass
class RandAugmentDraws:
    """The RandAugment numbers of B images, NUM_LAYERS ops each (layer order = application order)."""

    ops: torch.Tensor  # (B, L) int64 index into OPS
    applied: torch.Tensor  # (B, L) bool: the op's probability-0.5 coin came up
    levels: torch.Tensor  # (B, L) float magnitude / MAX_LEVEL after noise and clipping, in [0, 1]
    signs: torch.Tensor  # (B, L) float +1 or -1: the direction of the op's strength

    def chosen(self, layer: int, name: str) -> torch.Tensor:
        """(B,) bool: which images apply op ``name`` in ``layer``."""
        return self.applied[:, layer] & (self.ops[:, layer] == OPS.index(name))


def draw_randaugment(count: int, magnitude: float, generator: torch.Generator) -> RandAugmentDraws:
    """RandAugment numbers of ``count`` images at ``magnitude`` (0..10), on the generator's device."""
    device = generator.device
    shape = (count, NUM_LAYERS)
    ops = torch.randint(len(OPS), shape, generator=generator, device=device)
    applied = torch.rand(shape, generator=generator, device=device) < OP_PROB
    noise = torch.randn(shape, generator=generator, device=device)
    levels = (magnitude + MAGNITUDE_STD * noise).clamp(0.0, MAX_LEVEL) / MAX_LEVEL
    signs = torch.where(torch.rand(shape, generator=generator, device=device) < 0.5, -1.0, 1.0)
    return RandAugmentDraws(ops, applied, levels, signs)


def geometric_maps(draws: RandAugmentDraws, height: int, width: int) -> torch.Tensor:
    """(B, 3, 3) maps from image pixels to augmented-image pixels: the layers' geometric ops in order (identity for
    colour ops and ops not applied). Project coordinates: pixel j spans [j, j + 1).

    Each op is written as its forward map with a random sign; PIL's inverse maps with a random sign draw the same
    distribution."""
    count, device = draws.ops.shape[0], draws.ops.device
    zero, one = torch.zeros(count, device=device), torch.ones(count, device=device)
    cx, cy = width / 2, height / 2
    total = torch.eye(3, device=device).expand(count, 3, 3)
    for layer in range(NUM_LAYERS):
        amount = draws.signs[:, layer] * draws.levels[:, layer]
        angle = torch.deg2rad(amount * MAX_ROTATION_DEGREES)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rows = {  # the first two rows of each op's map, entry by entry
            "rotate": (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy),
            "shear_x": (one, amount * MAX_SHEAR, zero, zero, one, zero),
            "shear_y": (one, zero, zero, amount * MAX_SHEAR, one, zero),
            "translate_x": (one, zero, amount * MAX_TRANSLATE * width, zero, one, zero),
            "translate_y": (one, zero, zero, zero, one, amount * MAX_TRANSLATE * height),
        }
        step = torch.eye(3, device=device).expand(count, 3, 3)
        for name, entries in rows.items():
            matrix = torch.stack([*entries, zero, zero, one], -1).reshape(count, 3, 3)
            step = torch.where(draws.chosen(layer, name)[:, None, None], matrix, step)
        total = step @ total
    return total


def apply_colour_ops(images: torch.Tensor, draws: RandAugmentDraws) -> torch.Tensor:
    """The colour ops of the draws on float images (B, 3, H, W) in [0, 1], layer by layer (geometric ops are left to
    `geometric_maps`). Images an op does not apply to keep their pixels exactly.

    Each op runs on the images that take it only: one read of the (B, L) op table on the host per batch buys not
    computing 8 ops x 2 layers on the whole batch (about 0.6 image-ops per image instead of 16)."""
    taken = torch.where(draws.applied, draws.ops, -1).tolist()
    for layer in range(NUM_LAYERS):
        factor = 1.0 + draws.signs[:, layer] * draws.levels[:, layer] * MAX_ENHANCE
        bits = 4 - torch.floor(draws.levels[:, layer] * 4)  # timm's "increasing" posterize: 4 bits at level 0
        out = images.clone()
        for name, op in COLOUR_OPS.items():
            rows = [i for i, row in enumerate(taken) if row[layer] == OPS.index(name)]
            if rows:  # an image takes at most one op per layer, so every op reads the layer's input
                index = torch.tensor(rows, device=images.device)
                out[index] = op(images[index], factor[index], bits[index])
        images = out
    return images


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """PIL's posterize of float images (B, C, H, W) in [0, 1] read as 8-bit levels: keep the top ``bits`` (B,) bits."""
    step = torch.pow(2.0, 8 - bits).reshape(-1, 1, 1, 1)
    levels = torch.round(images * 255.0)
    return torch.floor(levels / step) * step / 255.0


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Sharpness with a factor (B,) per image: blend with the 3 x 3 smoothed image (torchvision's
    kernel, borders kept); factor 1 leaves an image unchanged."""
    smooth = TF.adjust_sharpness(images, 0.0)
    ratio = factor.to(images.dtype).reshape(-1, 1, 1, 1)
    return (smooth + ratio * (images - smooth)).clamp(0.0, 1.0)
