"""The random draws of the views: crop boxes, flips, photometric parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs.views import (
    ViewConfig,
    draw_views,
    is_flipping,
    sample_crop_boxes,
)
from lafs.views.photometric import IDENTITY as NO_PHOTOMETRY
from lafs.views.photometric import SIGMA, SOLARIZE
from tests.lafs.views.common import (
    K,
    seeded_generator,
)


@pytest.mark.parametrize("height, width", [(112, 112), (150, 90), (60, 200)])
def test_crop_boxes_follow_the_random_resized_crop_recipe(height: int, width: int) -> None:
    scale = torch.tensor([0.4, 1.0], dtype=torch.float64).expand(300, 2)
    x0, y0, w, h = sample_crop_boxes(height, width, scale, (0.75, 4 / 3), seeded_generator(8)).T.numpy()
    assert np.all((x0 >= 0) & (y0 >= 0) & (x0 + w <= width + 1e-9) & (y0 + h <= height + 1e-9))
    if (height, width) == (112, 112):  # a square image never needs the fallback
        assert np.all((w * h / (height * width) >= 0.4 - 1e-6) & (w * h / (height * width) <= 1 + 1e-6))
        assert np.all((w / h >= 0.75 - 1e-6) & (w / h <= 4 / 3 + 1e-6))
    # An impossible ratio range falls back to the centred crop clamped to it, as torchvision does.
    scale = torch.tensor([[0.99, 1.0]], dtype=torch.float64)
    x0, y0, w, h = sample_crop_boxes(100, 100, scale, (3.0, 4.0), seeded_generator(0))[0].tolist()
    assert (w, h) == (100.0, pytest.approx(100 / 3)) and (x0, y0) == (0.0, pytest.approx((100 - 100 / 3) / 2))


def test_view_maps_are_crops_then_maybe_flips() -> None:
    maps = draw_views(ViewConfig(flip_prob=1.0), K, (112, 112), 20, seeded_generator(9)).maps.flatten(0, 1).numpy()
    assert all(is_flipping(m) for m in maps)
    assert np.all((maps[:, 0, 1] == 0) & (maps[:, 1, 0] == 0) & (maps[:, 1, 1] >= 1) & (-maps[:, 0, 0] >= 1))
    maps = draw_views(ViewConfig(flip_prob=0.0), K, (90, 150), 20, seeded_generator(9)).maps.flatten(0, 1).numpy()
    assert not any(is_flipping(m) for m in maps)
    maps = draw_views(ViewConfig(), K, (112, 112), 40, seeded_generator(9)).maps.flatten(0, 1).numpy()
    assert 0.4 < np.mean([is_flipping(m) for m in maps]) < 0.6


def test_photometric_draws_follow_the_recipe() -> None:
    cfg = ViewConfig(num_local=6)
    params = draw_views(cfg, K, (112, 112), 4000, torch.Generator().manual_seed(1)).photometric
    blurred = (params[..., SIGMA] > 0).float().mean(0)
    torch.testing.assert_close(blurred[:2], torch.tensor([1.0, 0.1]), atol=0.03, rtol=0)
    torch.testing.assert_close(blurred[2:], torch.full((6,), 0.5), atol=0.04, rtol=0)
    solarized = params[..., SOLARIZE].mean(0)
    assert float(solarized[1]) == pytest.approx(0.2, abs=0.03) and float(solarized[[0, 2, 3]].sum()) == 0
    sigma = params[..., SIGMA][params[..., SIGMA] > 0]
    assert float(sigma.min()) >= 0.1 and float(sigma.max()) <= 2.0
    as_list = ViewConfig(blur_prob=[1.0, 0.0, 0.0])  # YAML gives lists: the draw must take them as tuples do
    listed = draw_views(as_list, K, (112, 112), 50, torch.Generator().manual_seed(1)).photometric[..., SIGMA] > 0
    assert bool(listed[:, 0].all()) and not bool(listed[:, 1:].any())
    off = draw_views(ViewConfig(photometric=False), K, (112, 112), 3, torch.Generator().manual_seed(1)).photometric
    assert torch.equal(off, torch.tensor(NO_PHOTOMETRY).expand_as(off))
