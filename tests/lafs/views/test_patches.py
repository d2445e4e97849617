"""Patches views (views.kind=patches, the DINO baseline): the regular grid of each view, DINO's small local crops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from timm.layers import PatchEmbed

from lafs.data.collate import collate_faces
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.errors import ConfigError
from lafs.landmarks.sets import get_landmark_set
from lafs.models import EncoderConfig, LandmarkPatchEmbed, build_encoder
from lafs.views import (
    DeviceViews,
    LandmarkViews,
    ViewConfig,
    check_view_set,
    draw_views,
    local_grid_ids,
)
from tests.lafs.views.common import IDENTITY, seeded_generator

GRID = "grid196"
PATCHES = ViewConfig(kind="patches", num_local=3)
# The 36 ids of a 48-pixel local view: global rows and columns 1, 3, 5, 8, 10, 12 (nearest relative position).
LOCAL_IDS = np.array([14 * r + c for r in (1, 3, 5, 8, 10, 12) for c in (1, 3, 5, 8, 10, 12)])


@pytest.fixture(scope="module")
def grid_faces() -> list[dict]:
    dataset = SyntheticFaces(SyntheticFacesConfig(num_identities=2, images_per_identity=2, landmark_set=GRID))
    return [dataset[i] for i in range(len(dataset))]


def test_local_tokens_take_the_nearest_global_position_ids() -> None:
    np.testing.assert_array_equal(local_grid_ids(112, 48, 8).numpy(), LOCAL_IDS)
    # A local view as large as the global one takes every id in order; 2 of 14 take columns 3 and 10.
    np.testing.assert_array_equal(local_grid_ids(112, 112, 8).numpy(), np.arange(196))
    np.testing.assert_array_equal(
        local_grid_ids(112, 16, 8).numpy(), [14 * 3 + 3, 14 * 3 + 10, 14 * 10 + 3, 14 * 10 + 10]
    )


def test_patches_defaults_are_dinos_small_local_crops() -> None:
    cfg = ViewConfig(kind="patches")
    cfg.validate()
    assert cfg.local_crop_scale == (0.05, 0.4) and cfg.local_side == 48 and cfg.global_scale == (0.4, 1.0)
    cfg = ViewConfig(kind="patches", local_scale=(0.1, 0.5), local_size=64)
    assert cfg.local_crop_scale == (0.1, 0.5) and cfg.local_side == 64
    assert ViewConfig(image_size=96).local_side == 96  # landmark views: locals as large as the globals


@pytest.mark.parametrize(
    ("changes", "landmark_set", "message"),
    [
        ({}, "mediapipe196", "encoder.landmark_set mediapipe196 is no patch grid"),
        ({"kind": "landmarks"}, GRID, "encoder.landmark_set grid196 is a regular patch grid"),
        ({"image_size": 96}, GRID, "views.image_size must be 112"),
        ({"local_size": 50}, GRID, "views.local_size must be a multiple of grid196's 8-pixel patches"),
    ],
)
def test_views_and_landmark_set_must_agree(changes: dict, landmark_set: str, message: str) -> None:
    cfg = dataclasses.replace(PATCHES, **changes)
    cfg.validate()  # each value is fine alone: only the pair is wrong
    with pytest.raises(ConfigError, match=message) as error:
        check_view_set(cfg, landmark_set, "encoder.landmark_set")
    assert "\n" not in str(error.value)
    for renderer in (LandmarkViews, DeviceViews):
        with pytest.raises(ConfigError):
            renderer(cfg, landmark_set)


@pytest.mark.parametrize(("field", "value"), [("local_size", 4), ("local_size", 113), ("kind", "dino")])
def test_impossible_values_name_their_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"views.{field}"):
        dataclasses.replace(PATCHES, **{field: value}).validate()


def test_tokens_sit_on_each_views_grid_whatever_the_face(grid_faces: list[dict]) -> None:
    views = LandmarkViews(PATCHES, GRID)
    face = grid_faces[0]
    out = views(face["image"], face["landmarks"], np.random.default_rng(0))
    # The data's landmarks play no part: random points give the same views.
    moved = np.random.default_rng(1).uniform(0, 112, (196, 2)).astype(np.float32)
    again = views(face["image"], moved, np.random.default_rng(0))
    for key in out:
        np.testing.assert_array_equal(out[key], again[key], err_msg=key)
    assert out["global_images"].shape == (2, 112, 112, 3) and out["local_images"].shape == (3, 48, 48, 3)
    np.testing.assert_array_equal(
        out["global_landmarks"], np.broadcast_to(get_landmark_set(GRID).template, (2, 196, 2))
    )
    local = np.array([[8 * c + 4, 8 * r + 4] for r in range(6) for c in range(6)], dtype=np.float32)
    # Each local view carries a full K-array (the encoder gathers its ids from it): its tokens sit at their ids.
    assert out["local_landmarks"].shape == (3, 196, 2)
    np.testing.assert_array_equal(out["local_landmarks"][:, LOCAL_IDS], np.broadcast_to(local, (3, 36, 2)))
    np.testing.assert_array_equal(out["local_ids"], np.broadcast_to(LOCAL_IDS, (3, 36)))
    assert out["global_valid"].all() and out["local_valid"].all() and out["local_valid"].shape == (3, 196)


def test_a_flipped_view_mirrors_pixels_and_keeps_its_grid(grid_faces: list[dict]) -> None:
    face = grid_faces[1]
    cfg = dataclasses.replace(PATCHES, photometric=False, local_size=112, **{**IDENTITY, "flip_prob": 1.0})
    out = LandmarkViews(cfg, GRID)(face["image"], face["landmarks"], np.random.default_rng(2))
    for view in range(2):
        np.testing.assert_array_equal(out["global_images"][view], face["image"][:, ::-1])  # an exact pixel mirror
        np.testing.assert_array_equal(out["global_landmarks"][view], get_landmark_set(GRID).template)  # no renaming
    np.testing.assert_array_equal(out["local_ids"][0], np.arange(196))


def test_local_crops_follow_dinos_scale_and_render_at_their_side() -> None:
    draws = draw_views(PATCHES, 196, (112, 112), 400, seeded_generator(3))
    scale = draws.maps[..., 0, 0].abs() * draws.maps[..., 1, 1]  # view pixels per image pixel, squared: side^2 / area
    side = torch.tensor([112.0, 112.0, 48.0, 48.0, 48.0])
    fraction = (side**2 / scale / 112**2).numpy()
    assert np.all((fraction[:, :2] >= 0.4 - 1e-5) & (fraction[:, :2] <= 1 + 1e-5))
    assert np.all((fraction[:, 2:] >= 0.05 - 1e-5) & (fraction[:, 2:] <= 0.4 + 1e-5))
    assert fraction[:, 2:].max() > 0.35 and fraction[:, 2:].min() < 0.07  # the whole range is drawn


def gather_ids(points: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Points (B, V, K, 2) at ids (B, V, k): what the encoder samples of a local view's full K-array."""
    return torch.gather(points, 2, ids[..., None].expand(-1, -1, -1, 2))


def test_view_tokens_are_timm_patch_embed_tokens_of_the_rendered_view(grid_faces: list[dict]) -> None:
    out = DeviceViews(PATCHES, GRID)(collate_faces(grid_faces), seeded_generator(4))
    torch.manual_seed(0)
    tokenizer = LandmarkPatchEmbed(num_landmarks=196, img_size=112, patch_size=8, embed_dim=16).double()
    for views, landmarks, side in (
        (out["global_images"], out["global_landmarks"], 112),
        (out["local_images"], gather_ids(out["local_landmarks"], out["local_ids"]), 48),
    ):
        reference = PatchEmbed(img_size=side, patch_size=8, in_chans=3, embed_dim=16).double()
        with torch.no_grad():
            reference.proj.weight.copy_(tokenizer.proj.weight.reshape(16, 3, 8, 8))
            reference.proj.bias.copy_(tokenizer.proj.bias)
        images = views.flatten(0, 1).double()
        tokens = tokenizer(images, landmarks.flatten(0, 1).double())
        torch.testing.assert_close(tokens, reference(images), atol=1e-10, rtol=1e-10)


def test_global_views_embed_as_the_encoders_image_only_call(grid_faces: list[dict]) -> None:
    # Fine-tuning and evaluation feed grid196 encoders images only (template landmarks): the same tokens.
    out = DeviceViews(PATCHES, GRID)(collate_faces(grid_faces), seeded_generator(5))
    encoder = build_encoder(EncoderConfig(landmark_set=GRID)).eval()
    images = out["global_images"].flatten(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images, out["global_landmarks"].flatten(0, 1)), encoder(images))
