"""View maps and the one flip with its left/right landmark-id permutation."""

from __future__ import annotations

import numpy as np
import torch

from lafs.landmarks.align import transform_points
from lafs.landmarks.sets import get_landmark_set
from lafs.views import (
    flip_batch,
    flip_map,
    invert_linear,
    is_flipping,
    map_landmarks,
    move_landmarks,
    view_maps,
)
from tests.lafs.views.common import (
    IDENTITY,
    SET,
    K,
    S,
    make_views,
    random_landmarks,
)


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


def test_flip_batch_mirrors_chosen_images_and_swaps_ids_by_hand() -> None:
    # Two landmarks that are each other's mirror partner, on a 4 px wide image; only image 0 flips.
    images = torch.arange(2 * 1 * 2 * 4, dtype=torch.float32).reshape(2, 1, 2, 4)
    landmarks = torch.tensor([[[0.5, 1.0], [3.0, 1.5]], [[0.5, 1.0], [3.0, 1.5]]])
    valid = torch.tensor([[True, False], [True, False]])
    permutation = torch.tensor([1, 0])
    out, moved, mask = flip_batch(images, landmarks, torch.tensor([True, False]), permutation, valid)
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    # x -> 4 - x, then slot k takes the point of id permutation[k].
    assert moved[0].tolist() == [[1.0, 1.5], [3.5, 1.0]] and torch.equal(moved[1], landmarks[1])
    assert mask is not None and mask.tolist() == [[False, True], [True, False]]
    assert flip_batch(images, landmarks, torch.tensor([True, True]), permutation)[2] is None


def test_numpy_moves_and_batch_flips_agree_with_the_view_maps() -> None:
    flip = torch.tensor(get_landmark_set(SET).flip_permutation)
    landmarks = torch.from_numpy(random_landmarks(np.random.default_rng(1)))
    valid = torch.arange(K) % 5 != 0
    mirror = view_maps(torch.tensor([[0.0, 0.0, S, S]]), torch.tensor([True]), S)  # (1, 2, 3): a pure flip
    via_maps, mask = map_landmarks(mirror[None], landmarks[None], valid[None], flip)
    images = torch.zeros(1, 3, S, S)
    _, flipped, flipped_mask = flip_batch(images, landmarks[None], torch.tensor([True]), flip, valid[None])
    torch.testing.assert_close(via_maps[0, 0], flipped[0], rtol=0, atol=1e-5)
    assert flipped_mask is not None and torch.equal(mask[0, 0], flipped_mask[0])
    moved, moved_valid = move_landmarks(landmarks.numpy(), valid.numpy(), flip_map(np.eye(2, 3), S), flip.numpy())
    np.testing.assert_allclose(moved, flipped[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(moved_valid, valid[flip].numpy())
    assert is_flipping(flip_map(np.eye(2, 3), S)) and not is_flipping(np.eye(2, 3))


def test_invert_linear_gives_inverses_and_determinants() -> None:
    linear = torch.tensor([[[2.0, 1.0], [0.5, 3.0]], [[-1.5, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    inverse, det = invert_linear(linear)
    torch.testing.assert_close(det, torch.tensor([5.5, -3.0], dtype=torch.float64))
    torch.testing.assert_close(inverse @ linear, torch.eye(2, dtype=torch.float64).expand(2, 2, 2))
