"""View maps and the one flip with its left/right landmark-id permutation."""

from __future__ import annotations

import numpy as np
import torch

from lafs.landmarks.align import transform_points
from lafs.landmarks.sets import get_landmark_set
from lafs.views import (
    LandmarkViews,
    ViewConfig,
    is_flipping,
    move_landmarks,
    view_maps,
)

SET = "mediapipe49"
K = 49
S = 112
# Geometry at the identity: the crop is the whole (square) image and nothing flips.
IDENTITY = {"global_scale": (1.0, 1.0), "local_scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_prob": 0.0}
# Every photometric op present but never applied: must be the same as photometric=False.
NO_PIXEL_OPS = {"color_jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": (0.0, 0.0, 0.0), "solarize_prob": 0.0}


def make_views(**overrides) -> LandmarkViews:
    return LandmarkViews(ViewConfig(**overrides), SET)


def random_landmarks(rng: np.random.Generator, size: int = S) -> np.ndarray:
    return rng.uniform(4, size - 4, size=(K, 2)).astype(np.float32)


def assert_same_views(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_view_maps_send_the_box_corners_to_the_view_corners() -> None:
    box = [13.25, 7.5, 61.0, 80.5]
    maps = view_maps(torch.tensor([box, box], dtype=torch.float64), torch.tensor([False, True]), S).numpy()
    corners = np.array([[13.25, 7.5], [13.25 + 61.0, 7.5 + 80.5], [13.25 + 30.5, 7.5 + 40.25]])
    np.testing.assert_allclose(transform_points(corners, maps[0]), [[0, 0], [S, S], [S / 2, S / 2]], atol=1e-4)
    np.testing.assert_allclose(transform_points(corners, maps[1]), [[S, 0], [0, S], [S / 2, S / 2]], atol=1e-4)
    assert is_flipping(maps[1]) and not is_flipping(maps[0])


def test_flipping_the_symmetric_template_gives_back_the_template() -> None:
    landmark_set = get_landmark_set(SET)
    template = np.asarray(landmark_set.template, dtype=np.float32)
    views = make_views(jitter_std=0.0, photometric=False, **{**IDENTITY, "flip_prob": 1.0})
    out = views(np.zeros((S, S, 3), dtype=np.uint8), template, np.random.default_rng(14))
    np.testing.assert_allclose(out["global_landmarks"][0], template, atol=1e-4)
    # Without the id permutation the mirrored template would be far off (left and right swapped).
    mirror = view_maps(torch.tensor([[0.0, 0.0, S, S]], dtype=torch.float64), torch.tensor([True]), S)[0].numpy()
    moved, _ = move_landmarks(template, np.ones(K, dtype=bool), mirror, np.arange(K))
    assert np.abs(moved - template).max() > 10
