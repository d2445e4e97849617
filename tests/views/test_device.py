"""Views of whole batches on their device: seeds, masks, globals only."""

from __future__ import annotations

import numpy as np
import torch

from lafs.data.collate import collate_faces
from lafs.views import (
    NUM_GLOBAL,
    DeviceViews,
    LandmarkViews,
    ViewConfig,
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


def test_views_are_a_function_of_the_generator_seed(faces: list[dict]) -> None:
    views = DeviceViews(ViewConfig(num_local=2, local_landmarks=5), SET)
    batch = collate_faces(faces)
    first, again = (views(batch, torch.Generator().manual_seed(7)) for _ in range(2))
    other = views(batch, torch.Generator().manual_seed(8))
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["global_images"], other["global_images"])
    assert first["local_images"].shape == (6, 2, 3, 112, 112) and first["local_ids"].shape == (6, 2, 5)


def test_missing_mask_means_all_valid_and_globals_only_works(faces: list[dict]) -> None:
    out = DeviceViews(ViewConfig(num_local=0), SET)(collate_faces(faces), torch.Generator().manual_seed(0))
    assert bool(out["global_valid"].all()) and out["global_valid"].shape == (6, NUM_GLOBAL, K)
    assert out["local_images"].shape == (6, 0, 3, 112, 112) and out["local_landmarks"].shape == (6, 0, 36, 2)
