"""LAFS pretraining views: shapes, landmark subsets, jitter, geometry that moves landmarks, flip ids, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lafs.augment import (
    LandmarkViews,
    PretrainViews,
    ViewConfig,
    collate_views,
    draw_views,
    is_flipping,
    move_landmarks,
    sample_crop_boxes,
    view_maps,
)
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.errors import ConfigError
from lafs.landmarks.align import transform_points, warp_image
from lafs.landmarks.sets import get_landmark_set

SET = "mediapipe49"
K = 49
S = 112
# Geometry at the identity: the crop is the whole (square) image and nothing flips.
IDENTITY = {"global_scale": (1.0, 1.0), "local_scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_prob": 0.0}
# Every photometric op present but never applied; differs from photometric=False only in going through albumentations.
NO_PIXEL_OPS = {"color_jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": (0.0, 0.0, 0.0), "solarize_prob": 0.0}


def make_views(**overrides) -> LandmarkViews:
    return LandmarkViews(ViewConfig(**overrides), SET)


@pytest.fixture(scope="module")
def faces() -> list[dict]:
    dataset = SyntheticFaces(SyntheticFacesConfig(num_identities=3, images_per_identity=2, landmark_set=SET))
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def face(faces: list[dict]) -> dict:
    return faces[0]


def random_landmarks(rng: np.random.Generator, size: int = S) -> np.ndarray:
    return rng.uniform(4, size - 4, size=(K, 2)).astype(np.float32)


def assert_same_views(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------------------------------------- shapes and subsets


def test_views_have_the_documented_shapes_and_dtypes(face: dict) -> None:
    views = make_views()
    out = views(face["image"], face["landmarks"], np.random.default_rng(0), face["landmark_valid"])
    expected = {
        "global_images": ((2, S, S, 3), np.uint8),
        "global_landmarks": ((2, K, 2), np.float32),
        "global_valid": ((2, K), np.bool_),
        "local_images": ((8, S, S, 3), np.uint8),
        "local_landmarks": ((8, 36, 2), np.float32),
        "local_ids": ((8, 36), np.int64),
        "local_valid": ((8, 36), np.bool_),
    }
    assert set(out) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert out[key].shape == shape and out[key].dtype == dtype, key
    assert ((out["local_ids"] >= 0) & (out["local_ids"] < K)).all()


def test_collated_batch_is_channels_first_uint8_with_labels(faces: list[dict]) -> None:
    dataset = PretrainViews(faces, make_views(num_local=3, local_landmarks=5), seed=1)
    batch = collate_views([dataset[i] for i in range(4)])
    expected = {
        "global_images": ((4, 2, 3, S, S), torch.uint8),
        "global_landmarks": ((4, 2, K, 2), torch.float32),
        "global_valid": ((4, 2, K), torch.bool),
        "local_images": ((4, 3, 3, S, S), torch.uint8),
        "local_landmarks": ((4, 3, 5, 2), torch.float32),
        "local_ids": ((4, 3, 5), torch.int64),
        "local_valid": ((4, 3, 5), torch.bool),
        "label": ((4,), torch.int64),
        "index": ((4,), torch.int64),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert batch["label"].tolist() == [f["label"] for f in faces[:4]]
    assert batch["index"].tolist() == [0, 1, 2, 3]
    item = dataset[2]
    np.testing.assert_array_equal(batch["local_images"][2, 1].permute(1, 2, 0).numpy(), item["local_images"][1])


def test_globals_only_config_collates_to_empty_local_tensors(faces: list[dict]) -> None:
    batch = collate_views([PretrainViews(faces, make_views(num_local=0), seed=0)[i] for i in range(2)])
    assert tuple(batch["local_images"].shape) == (2, 0, 3, S, S)
    assert tuple(batch["local_ids"].shape) == (2, 0, 36)
    assert tuple(batch["global_images"].shape) == (2, 2, 3, S, S)


def test_local_ids_are_uniform_with_replacement() -> None:
    views = make_views(image_size=16, photometric=False, **IDENTITY)
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    landmarks = random_landmarks(np.random.default_rng(0), 16)
    rng = np.random.default_rng(1)
    ids = np.concatenate([views(image, landmarks, rng)["local_ids"] for _ in range(150)])  # 1200 views x 36
    # 36 draws from 49 without a repeat has probability 49! / (13! 49^36) < 1e-8: every view must repeat an id.
    assert all(len(np.unique(row)) < 36 for row in ids)
    counts = np.bincount(ids.ravel(), minlength=K)
    expected = ids.size / K  # about 880 per id, std about 29
    assert counts.min() > 0.85 * expected and counts.max() < 1.15 * expected


def test_local_landmarks_are_the_view_landmarks_at_their_ids() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    landmarks = random_landmarks(np.random.default_rng(2), 32)
    valid = np.arange(K) % 3 != 0
    # Identity geometry and no jitter: the local landmarks are exactly the input landmarks at the ids.
    views = make_views(image_size=32, jitter_std=0.0, photometric=False, **IDENTITY)
    out = views(image, landmarks, np.random.default_rng(3), valid)
    np.testing.assert_array_equal(out["local_landmarks"], landmarks[out["local_ids"]])
    np.testing.assert_array_equal(out["local_valid"], valid[out["local_ids"]])
    # With jitter, a view's landmarks are jittered once and then gathered: a repeated id repeats the same point.
    out = make_views(image_size=32, photometric=False, **IDENTITY)(image, landmarks, np.random.default_rng(4), valid)
    for ids, points in zip(out["local_ids"], out["local_landmarks"], strict=True):
        assert not np.array_equal(points, landmarks[ids])
        for landmark in np.unique(ids):
            same = points[ids == landmark]
            np.testing.assert_array_equal(same, np.broadcast_to(same[0], same.shape))
    offsets = out["local_landmarks"] - landmarks[out["local_ids"]]
    assert 2.5 < offsets.std() < 7.5


# ----------------------------------------------------------------------------------------------------------- jitter


def test_jitter_has_the_configured_std_and_zero_mean() -> None:
    views = make_views(image_size=16, num_local=4, photometric=False, **IDENTITY)
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    landmarks = random_landmarks(np.random.default_rng(5), 16)
    rng = np.random.default_rng(6)
    offsets = []
    for _ in range(260):  # 260 x 2 globals x 49 x 2 coordinates: about 51 000 values, std of the std about 0.3%
        out = views(image, landmarks, rng)
        offsets.append((out["global_landmarks"] - landmarks).ravel())
    offsets = np.concatenate(offsets)
    assert offsets.size > 50_000
    assert abs(offsets.std() - 5.0) < 0.03 * 5.0
    assert abs(offsets.mean()) < 0.05
    # Per coordinate, not per point: x and y offsets are uncorrelated.
    xy = offsets.reshape(-1, 2)
    assert abs(np.corrcoef(xy[:, 0], xy[:, 1])[0, 1]) < 0.03


def test_zero_jitter_and_identity_geometry_give_back_the_input(face: dict) -> None:
    views = make_views(jitter_std=0.0, photometric=False, **IDENTITY)
    out = views(face["image"], face["landmarks"], np.random.default_rng(7))
    for view in range(2):
        np.testing.assert_array_equal(out["global_landmarks"][view], face["landmarks"])
        np.testing.assert_array_equal(out["global_images"][view], face["image"])
    for view in range(8):
        np.testing.assert_array_equal(out["local_images"][view], face["image"])


# --------------------------------------------------------------------------------------------------------- geometry


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_view_maps_send_the_box_corners_to_the_view_corners() -> None:
    box = [13.25, 7.5, 61.0, 80.5]
    maps = view_maps(torch.tensor([box, box], dtype=torch.float64), torch.tensor([False, True]), S).numpy()
    corners = np.array([[13.25, 7.5], [13.25 + 61.0, 7.5 + 80.5], [13.25 + 30.5, 7.5 + 40.25]])
    np.testing.assert_allclose(transform_points(corners, maps[0]), [[0, 0], [S, S], [S / 2, S / 2]], atol=1e-4)
    np.testing.assert_allclose(transform_points(corners, maps[1]), [[S, 0], [0, S], [S / 2, S / 2]], atol=1e-4)
    assert is_flipping(maps[1]) and not is_flipping(maps[0])


@pytest.mark.parametrize("height, width", [(112, 112), (150, 90), (60, 200)])
def test_crop_boxes_follow_the_random_resized_crop_recipe(height: int, width: int) -> None:
    scale = torch.tensor([0.4, 1.0], dtype=torch.float64).expand(300, 2)
    x0, y0, w, h = sample_crop_boxes(height, width, scale, (0.75, 4 / 3), _generator(8)).T.numpy()
    assert np.all((x0 >= 0) & (y0 >= 0) & (x0 + w <= width + 1e-9) & (y0 + h <= height + 1e-9))
    if (height, width) == (112, 112):  # a square image never needs the fallback
        assert np.all((w * h / (height * width) >= 0.4 - 1e-6) & (w * h / (height * width) <= 1 + 1e-6))
        assert np.all((w / h >= 0.75 - 1e-6) & (w / h <= 4 / 3 + 1e-6))
    # An impossible ratio range falls back to the centred crop clamped to it, as torchvision does.
    scale = torch.tensor([[0.99, 1.0]], dtype=torch.float64)
    x0, y0, w, h = sample_crop_boxes(100, 100, scale, (3.0, 4.0), _generator(0))[0].tolist()
    assert (w, h) == (100.0, pytest.approx(100 / 3)) and (x0, y0) == (0.0, pytest.approx((100 - 100 / 3) / 2))


def test_view_maps_are_crops_then_maybe_flips() -> None:
    maps = draw_views(ViewConfig(flip_prob=1.0), K, (112, 112), 20, _generator(9)).maps.flatten(0, 1).numpy()
    assert all(is_flipping(m) for m in maps)
    assert np.all((maps[:, 0, 1] == 0) & (maps[:, 1, 0] == 0) & (maps[:, 1, 1] >= 1) & (-maps[:, 0, 0] >= 1))
    maps = draw_views(ViewConfig(flip_prob=0.0), K, (90, 150), 20, _generator(9)).maps.flatten(0, 1).numpy()
    assert not any(is_flipping(m) for m in maps)
    maps = draw_views(ViewConfig(), K, (112, 112), 40, _generator(9)).maps.flatten(0, 1).numpy()
    assert 0.4 < np.mean([is_flipping(m) for m in maps]) < 0.6


def _dot_image(centre: np.ndarray, size: int = S, sigma: float = 1.5) -> np.ndarray:
    # A Gaussian blob whose intensity centroid is ``centre`` in project coordinates (pixel j's centre is j + 0.5).
    grid = np.arange(size) + 0.5
    blob = np.exp(-((grid[None, :] - centre[0]) ** 2 + (grid[:, None] - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(255 * blob).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    grid = np.arange(image.shape[0]) + 0.5
    return np.array([(weight.sum(0) * grid).sum(), (weight.sum(1) * grid).sum()]) / weight.sum()


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_landmarks_land_on_the_moved_image_point(flip_prob: float) -> None:
    landmark_set = get_landmark_set(SET)
    flip = landmark_set.flip_permutation
    dot = 7  # a landmark with a distinct mirror partner
    assert flip[dot] != dot
    landmarks = random_landmarks(np.random.default_rng(10))
    landmarks[dot] = (56.3, 55.8)  # every crop of scale >= 0.4 keeps the centre well inside
    image = _dot_image(landmarks[dot])
    np.testing.assert_allclose(_centroid(image), landmarks[dot], atol=0.02)
    views = make_views(num_local=4, local_landmarks=40, jitter_std=0.0, photometric=False, flip_prob=flip_prob)
    # After a mirror, the dot's landmark sits in slot flip[dot]: the slot that names its (image-side) facial point.
    slot, other = (flip[dot], dot) if flip_prob else (dot, flip[dot])
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(10):
        out = views(image, landmarks, rng)
        for view_image, points in zip(out["global_images"], out["global_landmarks"], strict=True):
            np.testing.assert_allclose(points[slot], _centroid(view_image), atol=0.25)
            assert np.abs(points[other] - points[slot]).max() > 2  # the mirror partner's slot is elsewhere
            checked += 1
        for view_image, points, ids in zip(out["local_images"], out["local_landmarks"], out["local_ids"], strict=True):
            for point in points[ids == slot]:
                np.testing.assert_allclose(point, _centroid(view_image), atol=0.25)
                checked += 1
    assert checked > 30


def test_flip_permutes_landmark_ids(face: dict) -> None:
    flip = get_landmark_set(SET).flip_permutation
    valid = np.arange(K) % 4 != 1
    views = make_views(jitter_std=0.0, photometric=False, **{**IDENTITY, "flip_prob": 1.0})
    out = views(face["image"], face["landmarks"], np.random.default_rng(12), valid)
    source = face["landmarks"]
    expected = np.stack([S - source[flip, 0], source[flip, 1]], axis=1)
    for view in range(2):
        np.testing.assert_allclose(out["global_landmarks"][view], expected, atol=1e-5)
        np.testing.assert_array_equal(out["global_valid"][view], valid[flip])
        np.testing.assert_array_equal(out["global_images"][view], face["image"][:, ::-1])  # an exact pixel mirror
    # Flipping the views again gives back the input, ids and pixels.
    again = views(
        out["global_images"][0], out["global_landmarks"][0], np.random.default_rng(13), out["global_valid"][0]
    )
    np.testing.assert_allclose(again["global_landmarks"][0], source, atol=1e-5)
    np.testing.assert_array_equal(again["global_valid"][0], valid)
    np.testing.assert_array_equal(again["global_images"][0], face["image"])


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


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_generator_state_gives_bit_identical_views(face: dict) -> None:
    a = make_views()(face["image"], face["landmarks"], np.random.default_rng(15))
    b = make_views()(face["image"], face["landmarks"], np.random.default_rng(15))  # a fresh instance too
    assert_same_views(a, b)
    views = make_views()
    first = views(face["image"], face["landmarks"], np.random.default_rng(15))
    views(face["image"], face["landmarks"], np.random.default_rng(99))  # albumentations' state must not carry over
    assert_same_views(views(face["image"], face["landmarks"], np.random.default_rng(15)), first)
    c = views(face["image"], face["landmarks"], np.random.default_rng(16))
    assert not np.array_equal(a["global_images"], c["global_images"])
    assert not np.array_equal(a["local_ids"], c["local_ids"])


def test_pretrain_views_are_a_pure_function_of_seed_epoch_and_index(faces: list[dict]) -> None:
    views = make_views(num_local=2)
    forward = PretrainViews(faces, views, seed=5)
    reverse = PretrainViews(faces, views, seed=5)
    items = [forward[i] for i in range(len(faces))]
    for i in reversed(range(len(faces))):
        assert_same_views(reverse[i], items[i])
    assert items[3]["label"] == faces[3]["label"] and items[3]["index"] == 3
    forward.set_epoch(1)
    later = forward[0]
    assert not np.array_equal(later["global_landmarks"], items[0]["global_landmarks"])
    assert not np.array_equal(later["global_images"], items[0]["global_images"])
    forward.set_epoch(0)
    assert_same_views(forward[0], items[0])  # resuming at epoch 0 replays it exactly
    assert_same_views(forward[-1], items[-1])
    other_seed = PretrainViews(faces, views, seed=6)[0]
    assert not np.array_equal(other_seed["local_ids"], items[0]["local_ids"])
    # Two items of one epoch get different draws.
    assert not np.array_equal(items[0]["local_ids"], items[1]["local_ids"])
    with pytest.raises(IndexError):
        forward[len(faces)]
    with pytest.raises(ValueError, match="epoch"):
        forward.set_epoch(-1)


def test_worker_processes_make_the_same_views(faces: list[dict]) -> None:
    dataset = PretrainViews(faces, make_views(num_local=2, local_landmarks=6), seed=3)
    dataset.set_epoch(2)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_views)
    batches = list(loader)
    direct = [collate_views([dataset[i] for i in range(start, start + 3)]) for start in (0, 3)]
    for got, want in zip(batches, direct, strict=True):
        for key in want:
            assert torch.equal(got[key], want[key]), key


# ------------------------------------------------------------------------------------------------------ photometry


def test_photometry_off_leaves_exactly_the_warped_image(face: dict) -> None:
    views = make_views(photometric=False)
    out = views(face["image"], face["landmarks"], np.random.default_rng(17))
    # The call seeds its torch generator with the first draw of the caller's: replaying that gives global 1's map.
    generator = _generator(int(np.random.default_rng(17).integers(2**62)))
    matrix = draw_views(views.cfg, K, face["image"].shape[:2], 1, generator).maps[0, 0].double().numpy()
    np.testing.assert_array_equal(out["global_images"][0], warp_image(face["image"], matrix, S))
    # Running every albumentations op at p = 0 is the same as switching photometry off.
    assert_same_views(make_views(**NO_PIXEL_OPS)(face["image"], face["landmarks"], np.random.default_rng(17)), out)


def test_photometry_changes_pixels_but_never_landmarks(face: dict) -> None:
    plain = make_views(photometric=False)(face["image"], face["landmarks"], np.random.default_rng(18))
    coloured = make_views()(face["image"], face["landmarks"], np.random.default_rng(18))
    for key in ("global_landmarks", "global_valid", "local_landmarks", "local_ids", "local_valid"):
        np.testing.assert_array_equal(coloured[key], plain[key], err_msg=key)
    images = ("global_images", "local_images")
    changed = [not np.array_equal(a, b) for key in images for a, b in zip(coloured[key], plain[key], strict=True)]
    assert changed[0]  # global 1 is always blurred
    assert sum(changed) >= 7


def test_photometric_recipe_reaches_the_right_views(face: dict) -> None:
    rng_seed = 19
    plain = make_views(photometric=False)(face["image"], face["landmarks"], np.random.default_rng(rng_seed))
    # Solarisation is for global 2 only: pixels at or above 128 are inverted there and nowhere else.
    solar = make_views(**{**NO_PIXEL_OPS, "solarize_prob": 1.0})(
        face["image"], face["landmarks"], np.random.default_rng(rng_seed)
    )
    np.testing.assert_array_equal(solar["global_images"][0], plain["global_images"][0])
    warped = plain["global_images"][1]
    np.testing.assert_array_equal(solar["global_images"][1], np.where(warped >= 128, 255 - warped, warped))
    np.testing.assert_array_equal(solar["local_images"], plain["local_images"])
    # Grayscale with p = 1 makes every view grey (three equal channels).
    grey = make_views(**{**NO_PIXEL_OPS, "grayscale_prob": 1.0})(
        face["image"], face["landmarks"], np.random.default_rng(rng_seed)
    )
    for images in (grey["global_images"], grey["local_images"]):
        assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
    # Blur probabilities are (global 1, global 2, locals). σ below 0.29 gives PIL's 1-tap kernel (no change), so
    # global 1 changes in most calls, not all.
    blur_views = make_views(**{**NO_PIXEL_OPS, "blur_prob": (1.0, 0.0, 0.0)})
    changed = 0
    for seed in range(rng_seed, rng_seed + 6):
        plain = make_views(photometric=False)(face["image"], face["landmarks"], np.random.default_rng(seed))
        blurred = blur_views(face["image"], face["landmarks"], np.random.default_rng(seed))
        changed += not np.array_equal(blurred["global_images"][0], plain["global_images"][0])
        np.testing.assert_array_equal(blurred["global_images"][1], plain["global_images"][1])
        np.testing.assert_array_equal(blurred["local_images"], plain["local_images"])
    assert changed >= 4


# ----------------------------------------------------------------------------------------------------------- config


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


def test_unknown_landmark_set_and_bad_inputs_are_rejected(face: dict) -> None:
    with pytest.raises(ConfigError, match="unknown landmark set"):
        LandmarkViews(ViewConfig(), "no_such_set")
    views = make_views()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="landmarks must be"):
        views(face["image"], face["landmarks"][:10], rng)
    with pytest.raises(ValueError, match="image must be"):
        views(face["image"][..., 0], face["landmarks"], rng)
    with pytest.raises(ValueError, match="valid must be"):
        views(face["image"], face["landmarks"], rng, np.ones(3, dtype=bool))
