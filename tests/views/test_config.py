"""ViewConfig validation and defaults, and where the views are made."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lafs.errors import ConfigError
from lafs.views import (
    LandmarkViews,
    ViewConfig,
    views_on_accelerator,
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


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_size", 4),
        ("num_local", -1),
        ("local_landmarks", 0),
        ("jitter_std", -1.0),
        ("jitter_std", float("nan")),
        ("global_scale", (0.0, 1.0)),
        ("global_scale", (0.5, 1.2)),
        ("local_scale", (0.8, 0.4)),
        ("local_scale", (0.4,)),
        ("ratio", (0.0, 1.0)),
        ("ratio", (1.5, 1.0)),
        ("flip_prob", 1.5),
        ("color_jitter_prob", -0.1),
        ("grayscale_prob", 2.0),
        ("blur_prob", (1.0, 0.1, 1.5)),
        ("blur_prob", (1.0, 0.1)),
        ("solarize_prob", -0.5),
    ],
)
def test_impossible_configs_raise_config_error(field: str, value) -> None:
    cfg = dataclasses.replace(ViewConfig(), **{field: value})
    with pytest.raises(ConfigError, match=f"views.{field}"):
        cfg.validate()
    with pytest.raises(ConfigError):
        LandmarkViews(cfg, SET)


def test_defaults_are_the_lafs_recipe() -> None:
    cfg = ViewConfig()
    cfg.validate()
    assert (cfg.num_local, cfg.local_landmarks, cfg.jitter_std, cfg.image_size) == (8, 36, 5.0, 112)
    assert cfg.global_scale == cfg.local_scale == (0.4, 1.0) and cfg.blur_prob == (1.0, 0.1, 0.5)
    ViewConfig(num_local=0, jitter_std=0.0, flip_prob=1.0, global_scale=(1.0, 1.0)).validate()  # edge values are fine


def test_views_are_made_on_cuda_devices_unless_told_otherwise() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert views_on_accelerator(ViewConfig(), cuda) and not views_on_accelerator(ViewConfig(), cpu)
    assert views_on_accelerator(ViewConfig(make_on="accelerator"), cpu)
    assert not views_on_accelerator(ViewConfig(make_on="loader"), cuda)
