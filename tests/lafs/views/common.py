"""What the view tests share: the landmark set, sizes, recipes that switch parts of the views off, helpers."""

from __future__ import annotations

import numpy as np
import torch

from lafs.views import LandmarkViews, ViewConfig

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


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
