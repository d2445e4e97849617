"""ViewConfig validation and defaults, and where the views are made."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lafs.errors import ConfigError
from lafs.views import (
    LandmarkViews,
    ViewConfig,
    views_on_accelerator,
)
from tests.lafs.views.common import (
    SET,
)


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
    assert cfg.global_scale == cfg.local_crop_scale == (0.4, 1.0) and cfg.blur_prob == (1.0, 0.1, 0.5)
    assert cfg.kind == "landmarks" and cfg.local_side == cfg.image_size  # LAFS locals: global-sized crops
    ViewConfig(num_local=0, jitter_std=0.0, flip_prob=1.0, global_scale=(1.0, 1.0)).validate()  # edge values are fine


def test_views_are_made_on_cuda_devices_unless_told_otherwise() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert views_on_accelerator(ViewConfig(), cuda) and not views_on_accelerator(ViewConfig(), cpu)
    assert views_on_accelerator(ViewConfig(make_on="accelerator"), cpu)
    assert not views_on_accelerator(ViewConfig(make_on="loader"), cuda)
