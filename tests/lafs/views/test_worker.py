"""Views of one face rendered in a loader worker: shapes, landmark subsets, jitter, geometry, flip ids, photometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs.errors import ConfigError
from lafs.landmarks.sets import get_landmark_set
from lafs.views import LandmarkViews, ViewConfig, draw_views, to_uint8, warp_views
from tests.lafs.views.common import (
    IDENTITY,
    NO_PIXEL_OPS,
    SET,
    K,
    S,
    assert_same_views,
    make_views,
    random_landmarks,
    seeded_generator,
)


def test_views_have_the_documented_shapes_and_dtypes(face: dict) -> None:
    views = make_views()
    out = views(face["image"], face["landmarks"], np.random.default_rng(0), face["landmark_valid"])
    expected = {
        "global_images": ((2, S, S, 3), np.uint8),
        "global_landmarks": ((2, K, 2), np.float32),
        "global_valid": ((2, K), np.bool_),
        "local_images": ((8, S, S, 3), np.uint8),
        "local_landmarks": ((8, K, 2), np.float32),
        "local_ids": ((8, 36), np.int64),
        "local_valid": ((8, K), np.bool_),
    }
    assert set(out) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert out[key].shape == shape and out[key].dtype == dtype, key
    assert ((out["local_ids"] >= 0) & (out["local_ids"] < K)).all()


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


def test_local_views_carry_their_full_landmark_set() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    landmarks = random_landmarks(np.random.default_rng(2), 32)
    valid = np.arange(K) % 3 != 0
    # Identity geometry and no jitter: every local view carries exactly the input landmarks and mask, all K of them.
    views = make_views(image_size=32, jitter_std=0.0, photometric=False, **IDENTITY)
    out = views(image, landmarks, np.random.default_rng(3), valid)
    np.testing.assert_array_equal(out["local_landmarks"], np.broadcast_to(landmarks, out["local_landmarks"].shape))
    np.testing.assert_array_equal(out["local_valid"], np.broadcast_to(valid, out["local_valid"].shape))
    # With jitter, each view's K points are jittered once (a repeated id will take the same point), per view.
    out = make_views(image_size=32, photometric=False, **IDENTITY)(image, landmarks, np.random.default_rng(4), valid)
    offsets = out["local_landmarks"] - landmarks
    assert not np.array_equal(offsets[0], offsets[1])
    assert 2.5 < offsets.std() < 7.5


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
        for view_image, points in zip(out["local_images"], out["local_landmarks"], strict=True):
            np.testing.assert_allclose(points[slot], _centroid(view_image), atol=0.25)
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


def test_same_generator_state_gives_bit_identical_views(face: dict) -> None:
    a = make_views()(face["image"], face["landmarks"], np.random.default_rng(15))
    b = make_views()(face["image"], face["landmarks"], np.random.default_rng(15))  # a fresh instance too
    assert_same_views(a, b)
    views = make_views()
    first = views(face["image"], face["landmarks"], np.random.default_rng(15))
    views(face["image"], face["landmarks"], np.random.default_rng(99))  # no state may carry over between calls
    assert_same_views(views(face["image"], face["landmarks"], np.random.default_rng(15)), first)
    c = views(face["image"], face["landmarks"], np.random.default_rng(16))
    assert not np.array_equal(a["global_images"], c["global_images"])
    assert not np.array_equal(a["local_ids"], c["local_ids"])


def test_photometry_off_leaves_exactly_the_warped_image(face: dict) -> None:
    views = make_views(photometric=False)
    out = views(face["image"], face["landmarks"], np.random.default_rng(17))
    # The call seeds its torch generator with the first draw of the caller's: replaying that gives global 1's map.
    generator = seeded_generator(int(np.random.default_rng(17).integers(2**62)))
    maps = draw_views(views.cfg, K, face["image"].shape[:2], 1, generator).maps[:, :1]
    warped = to_uint8(warp_views(torch.from_numpy(face["image"]).permute(2, 0, 1)[None], maps, S))
    np.testing.assert_array_equal(out["global_images"][0], warped[0, 0].permute(1, 2, 0).numpy())
    # Running every photometric op at p = 0 is the same as switching photometry off.
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
