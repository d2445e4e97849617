"""The released face RandAugment on batches: its draws, its geometric maps by hand, its colour ops against PIL's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from finetune.randaugment import (
    OPS,
    RandAugmentDraws,
    apply_colour_ops,
    draw_randaugment,
    geometric_maps,
)


def one_op(op: str, level: float, sign: float = 1.0, count: int = 1) -> RandAugmentDraws:
    """``op`` at ``level`` in the first layer of ``count`` images, the second layer off."""
    return RandAugmentDraws(
        ops=torch.tensor([[OPS.index(op), 0]] * count),
        applied=torch.tensor([[True, False]] * count),
        levels=torch.full((count, 2), level),
        signs=torch.full((count, 2), sign),
    )


def test_draws_follow_the_released_recipe():
    draws = draw_randaugment(20000, 2, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws.ops.flatten(), minlength=len(OPS)).float()
    assert len(OPS) == 13 and "solarize" not in " ".join(OPS)  # the face variant drops both solarize ops
    assert (counts / counts.mean() - 1).abs().max() < 0.06  # uniform choice, with replacement
    assert abs(float(draws.applied.float().mean()) - 0.5) < 0.01  # each op applied with p 0.5
    assert abs(float(draws.levels.mean()) - 0.2) < 0.002 and abs(float(draws.levels.std()) - 0.05) < 0.002
    assert abs(float(draws.signs.mean())) < 0.02 and set(draws.signs.unique().tolist()) == {-1.0, 1.0}
    clipped = draw_randaugment(1000, 0, torch.Generator().manual_seed(1)).levels
    assert float(clipped.min()) == 0.0 and float((clipped == 0).float().mean()) > 0.4  # N(0, 0.5) clipped at 0


def test_geometric_maps_by_hand():
    size = 100
    point = torch.tensor([60.0, 50.0, 1.0])  # 10 px right of the centre (50, 50)
    rotate = geometric_maps(one_op("rotate", 1.0), size, size)[0]  # 30 degrees
    assert torch.allclose(rotate @ torch.tensor([50.0, 50.0, 1.0]), torch.tensor([50.0, 50.0, 1.0]), atol=1e-5)
    expected = torch.tensor([50 + 10 * math.cos(math.pi / 6), 50 + 10 * math.sin(math.pi / 6), 1.0])
    assert torch.allclose(rotate @ point, expected, atol=1e-4)
    shear = geometric_maps(one_op("shear_x", 0.5, sign=-1.0), size, size)[0]  # x - 0.15 y
    assert torch.allclose(shear @ point, torch.tensor([60 - 0.15 * 50, 50.0, 1.0]))
    shear_y = geometric_maps(one_op("shear_y", 1.0), size, size)[0]  # y + 0.3 x
    assert torch.allclose(shear_y @ point, torch.tensor([60.0, 50 + 0.3 * 60, 1.0]))
    move = geometric_maps(one_op("translate_y", 1.0), size, size)[0]  # 0.45 of the side
    assert torch.allclose(move @ point, torch.tensor([60.0, 95.0, 1.0]))
    # Two layers compose in order; a colour op or an op not applied is the identity.
    both = one_op("translate_x", 0.2)
    both.ops[0, 1], both.applied[0, 1] = OPS.index("translate_x"), True
    assert torch.allclose(geometric_maps(both, size, size)[0] @ point, torch.tensor([60.0 + 18.0, 50.0, 1.0]))
    assert torch.equal(geometric_maps(one_op("equalize", 1.0), size, size)[0], torch.eye(3))
    off = one_op("rotate", 1.0)
    off.applied[:] = False
    assert torch.equal(geometric_maps(off, size, size)[0], torch.eye(3))


def face_like(seed: int = 0, size: int = 24) -> np.ndarray:
    """A uint8 RGB image (size, size, 3) with smooth colour gradients and noise, not spanning 0..255."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, size)
    base = 60 + 120 * grid[None, :, None] * np.array([1.0, 0.6, 0.3]) + 40 * grid[:, None, None]
    return np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


# level 0.5 -> factor 1 +- 0.45, posterize to 4 - int(2) = 2 bits
PIL_OPS = {
    "auto_contrast": lambda image: ImageOps.autocontrast(image),
    "equalize": lambda image: ImageOps.equalize(image),
    "invert": lambda image: ImageOps.invert(image),
    "posterize": lambda image: ImageOps.posterize(image, 2),
    "color": lambda image: ImageEnhance.Color(image).enhance(1.45),
    "contrast": lambda image: ImageEnhance.Contrast(image).enhance(1.45),
    "brightness": lambda image: ImageEnhance.Brightness(image).enhance(1.45),
    "sharpness": lambda image: ImageEnhance.Sharpness(image).enhance(1.45),
}


@pytest.mark.parametrize("op", list(PIL_OPS))
def test_colour_ops_match_pil(op):
    image = face_like()
    expected = np.asarray(PIL_OPS[op](Image.fromarray(image)), dtype=np.float64)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    # The second image does not take the op: it keeps its pixels exactly.
    both = one_op(op, 0.5, count=2)
    both.applied[1, 0] = False
    out = apply_colour_ops(pixels.expand(2, -1, -1, -1), both)
    assert torch.equal(out[1], pixels[0])
    ours = out[0].permute(1, 2, 0).double().numpy() * 255
    # PIL rounds to 8 bits and computes grey levels with integer weights: within about one level (measured 1.18).
    assert np.abs(ours - expected).max() <= 1.5, np.abs(ours - expected).max()
    assert np.abs(ours - image).max() > 5  # the op changed the image


def test_ops_of_both_layers_apply_in_order():
    pixels = torch.full((1, 3, 4, 4), 0.2)
    draws = one_op("brightness", 1.0)  # x 1.9
    draws.ops[0, 1], draws.applied[0, 1] = OPS.index("invert"), True
    assert torch.allclose(apply_colour_ops(pixels, draws), torch.full((1, 3, 4, 4), 1 - 0.38))
