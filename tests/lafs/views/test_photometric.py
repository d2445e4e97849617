"""Batched photometric ops with a parameter per image match torchvision's functional ops image by image."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from lafs.views import ViewConfig, draw_views
from lafs.views import photometric as P


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(5, 3, 20, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


FACTORS = torch.tensor([0.6, 0.9, 1.0, 1.2, 1.4], dtype=torch.float64)
SHIFTS = torch.tensor([-0.1, -0.03, 0.0, 0.05, 0.1], dtype=torch.float64)


@pytest.mark.parametrize(
    "ours, theirs, factors, atol",
    [
        (P.adjust_brightness, TF.adjust_brightness, FACTORS, 1e-12),
        (P.adjust_contrast, TF.adjust_contrast, FACTORS, 1e-12),
        (P.adjust_saturation, TF.adjust_saturation, FACTORS, 1e-12),
        (P.adjust_hue, TF.adjust_hue, SHIFTS, 1e-5),  # torchvision's hue path is not exact in float64 either
    ],
)
def test_colour_ops_match_torchvision_per_image(images: torch.Tensor, ours, theirs, factors, atol: float) -> None:
    expected = torch.stack([theirs(image, float(f)) for image, f in zip(images, factors, strict=True)])
    torch.testing.assert_close(ours(images, factors), expected, rtol=0, atol=atol)


def test_blur_grey_and_solarize_match_torchvision(images: torch.Tensor) -> None:
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    expected = torch.stack(
        [
            TF.gaussian_blur(image, [int(3.5 * float(s)) * 2 + 1] * 2, [float(s)] * 2)
            for image, s in zip(images, sigma, strict=True)
        ]
    )
    torch.testing.assert_close(P.gaussian_blur(images, sigma), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(P.grey(images), TF.rgb_to_grayscale(images), rtol=0, atol=1e-12)
    torch.testing.assert_close(P.solarize(images), TF.solarize(images, 0.5), rtol=0, atol=0)
    unblurred = P.gaussian_blur(images, torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(unblurred, images, rtol=0, atol=0)  # sigma 0: an exact delta kernel


def test_recipe_applies_each_image_its_own_ops_in_its_own_order(images: torch.Tensor) -> None:
    params = torch.tensor(P.IDENTITY, dtype=torch.float64).repeat(5, 1)
    # Image 1: jitter in the order hue, saturation, contrast, brightness; image 2: grey + blur; image 3: solarize.
    params[1, P.JITTER], params[1, P.BRIGHTNESS : P.HUE + 1] = 1, torch.tensor([1.3, 0.7, 1.1, 0.05])
    params[1, P.ORDER] = torch.tensor([3.0, 2.0, 1.0, 0.0])
    params[2, P.GREY], params[2, P.SIGMA] = 1, 1.0
    params[3, P.SOLARIZE] = 1
    out = P.apply_photometric(images, params)
    torch.testing.assert_close(out[[0, 4]], images[[0, 4]], rtol=0, atol=0)  # identity rows are untouched
    step = TF.adjust_hue(images[1], 0.05)
    step = TF.adjust_saturation(step, 1.1)
    step = TF.adjust_contrast(step, 0.7)
    torch.testing.assert_close(out[1], TF.adjust_brightness(step, 1.3), rtol=0, atol=1e-5)
    grey = TF.rgb_to_grayscale(images[2], num_output_channels=3)
    torch.testing.assert_close(out[2], TF.gaussian_blur(grey, [7, 7], [1.0, 1.0]), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[3], TF.solarize(images[3], 0.5), rtol=0, atol=0)


def test_accelerator_style_selection_gives_the_same_images() -> None:
    params = draw_views(ViewConfig(num_local=6), 49, (112, 112), 16, torch.Generator().manual_seed(0)).photometric
    params = params.flatten(0, 1)
    images = torch.rand(len(params), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rows_only = P.apply_photometric(images, params, select=False)
    # Equal up to float rounding: the blur's filter is sized for sigma 2 on the whole batch, tightly image by image.
    torch.testing.assert_close(P.apply_photometric(images, params, select=True), rows_only, rtol=0, atol=1e-6)
    assert not torch.equal(rows_only, images)


def test_hue_rotation_leaves_greys_and_turns_primaries_by_hand() -> None:
    grey = torch.full((1, 3, 2, 2), 0.4)
    torch.testing.assert_close(P.adjust_hue(grey, torch.tensor([0.3])), grey, rtol=0, atol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1).expand(3, 3, 1, 1)
    turned = P.adjust_hue(red, torch.tensor([1 / 3, -1 / 3, 1 / 6]))[..., 0, 0]
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # green, blue, yellow
    torch.testing.assert_close(turned, expected, rtol=0, atol=1e-6)
