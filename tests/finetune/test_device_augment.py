"""Fine-tuning augmentation on the device: landmarks move with every geometric op, photometric ops leave them alone,
switches off are the identity, a seed reproduces a batch; and mixup."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from finetune.device_augment import (
    AugmentConfig,
    AugmentDraws,
    BatchMixup,
    apply_augment,
    augment_batch,
    draw_augment,
)
from finetune.randaugment import OPS, RandAugmentDraws
from lafs.data.collate import normalize_images
from lafs.errors import ConfigError
from lafs.landmarks import get_landmark_set

SET = "mediapipe49"
PERMUTATION = torch.tensor(get_landmark_set(SET).flip_permutation)
K, S = len(PERMUTATION), 112
DOT = 7  # a landmark with a distinct mirror partner
OFF = AugmentConfig(flip=0.0, mixup_prob=0.0)  # every op off
RELEASED = AugmentConfig(crop_scale=(0.9, 1.0), color_jitter=0.1, erasing=0.5, randaugment=1)  # LAFS on WebFace4M


def dot_batch(centres: np.ndarray, sigma: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, 3, S, S): a bright Gaussian dot at each centre (B, 2) on RandAugment's fill grey, so pixels a
    warp uncovers add nothing to the dot; landmarks (B, K, 2) spread over the face with landmark DOT at the dot."""
    grid = np.arange(S) + 0.5
    images, landmarks = [], []
    rng = np.random.default_rng(0)
    for x, y in centres:
        blob = np.exp(-((grid[None, :] - x) ** 2 + (grid[:, None] - y) ** 2) / (2 * sigma**2))
        images.append(np.repeat(np.round(128 + 127 * blob)[None], 3, axis=0))
        points = rng.uniform(20, S - 20, size=(K, 2))
        points[DOT] = (x, y)
        landmarks.append(points)
    return torch.tensor(np.stack(images), dtype=torch.uint8), torch.tensor(np.stack(landmarks), dtype=torch.float32)


def dot_centre(images: torch.Tensor) -> torch.Tensor:
    """(B, 2) intensity centroid above the fill grey of normalised images (B, 3, S, S)."""
    weight = ((images[:, 0] * 0.5 + 0.5) * 255 - 128).clamp(min=0) ** 2  # squared: edge blur of the fill weighs nothing
    grid = torch.arange(S, dtype=torch.float32) + 0.5
    total = weight.sum((1, 2))
    return torch.stack([(weight.sum(1) * grid).sum(1) / total, (weight.sum(2) * grid).sum(1) / total], -1)


def forced(draws: AugmentDraws, op: str, level: float, sign: float, flips: bool) -> AugmentDraws:
    """``draws`` with RandAugment's first layer forced to ``op`` at ``level`` and ``sign``, the second off."""
    count = draws.flips.shape[0]
    randaugment = RandAugmentDraws(
        ops=torch.tensor([[OPS.index(op), 0]] * count),
        applied=torch.tensor([[True, False]] * count),
        levels=torch.full((count, 2), level),
        signs=torch.full((count, 2), sign),
    )
    return dataclasses.replace(draws, randaugment=randaugment, flips=torch.full((count,), flips))


GEOMETRIC = ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"]


@pytest.mark.parametrize("flips", [False, True], ids=["kept", "mirrored"])
@pytest.mark.parametrize("op", GEOMETRIC)
def test_each_geometric_op_moves_the_landmark_onto_the_dot(op, flips):
    centres = np.array([[45.3, 48.8], [66.6, 52.1], [55.2, 66.7]])  # stay inside under every op and crop below
    images, landmarks = dot_batch(centres)
    cfg = AugmentConfig(crop_scale=(0.8, 1.0), randaugment=3, mixup_prob=0.0)
    draws = draw_augment(cfg, len(images), (S, S), torch.Generator().manual_seed(1))
    # Level 0.3: 9 degrees, shear 0.09, shift 0.135 x 112 = 15 px; with a crop and maybe a flip composed.
    draws = forced(draws, op, level=0.3, sign=1.0, flips=flips)
    out, moved = apply_augment(images, landmarks, draws, cfg, PERMUTATION)
    assert moved is not None
    slot, partner = (int(PERMUTATION[DOT]), DOT) if flips else (DOT, int(PERMUTATION[DOT]))
    found = dot_centre(out)
    assert torch.allclose(moved[:, slot], found, atol=1.0), (moved[:, slot], found)
    assert (moved[:, slot] - landmarks[:, DOT]).abs().max() > 2  # it did move
    assert ((moved[:, partner] - found).abs().max(-1).values > 2).all()  # and its mirror partner's slot is elsewhere


def test_the_released_geometry_keeps_landmarks_on_the_dot():
    centres = np.random.default_rng(3).uniform(45, 67, size=(16, 2))
    images, landmarks = dot_batch(centres)
    cfg = dataclasses.replace(RELEASED, randaugment=2)  # MS1MV3's magnitude
    draws = draw_augment(cfg, 16, (S, S), torch.Generator().manual_seed(5))
    geometric = torch.isin(draws.randaugment.ops, torch.tensor([OPS.index(op) for op in GEOMETRIC]))
    assert (geometric & draws.randaugment.applied).any() and draws.flips.any() and (~draws.flips).any()
    # Colour ops (invert, equalize, jitter, erasing) would hide the dot from the centroid: geometry only.
    draws.randaugment.applied &= geometric
    cfg = dataclasses.replace(cfg, color_jitter=0.0, erasing=0.0)
    out, moved = apply_augment(images, landmarks, draws, cfg, PERMUTATION)
    assert moved is not None
    slots = torch.where(draws.flips, PERMUTATION[DOT], DOT)  # a mirrored dot is named by its partner's slot
    assert torch.allclose(moved[torch.arange(16), slots], dot_centre(out), atol=1.0)


def test_flips_alone_mirror_exactly_and_keep_landmark_ids():
    images, landmarks = dot_batch(np.array([[30.25, 60.5], [30.25, 60.5]]))
    draws = draw_augment(OFF, 2, (S, S), torch.Generator())
    draws = dataclasses.replace(draws, flips=torch.tensor([True, False]))
    out, moved = apply_augment(images, landmarks, draws, OFF, PERMUTATION)
    assert moved is not None
    assert torch.equal(out[0], normalize_images(images[0].flip(-1)))  # no resampling: the exact mirror image
    assert torch.equal(moved[0, PERMUTATION[DOT]], torch.tensor([S - 30.25, 60.5]))  # slot of the dot's new side
    assert torch.equal(moved[0], torch.stack([S - landmarks[0, :, 0], landmarks[0, :, 1]], -1)[PERMUTATION])
    assert torch.equal(out[1], normalize_images(images[1])) and torch.equal(moved[1], landmarks[1])


def test_everything_off_is_the_identity():
    images, landmarks = dot_batch(np.array([[50.0, 50.0], [60.0, 40.0]]))
    out, moved = augment_batch(images, landmarks, OFF, PERMUTATION, torch.Generator().manual_seed(0))
    assert torch.equal(out, normalize_images(images)) and moved is not None and torch.equal(moved, landmarks)
    out, none = augment_batch(images, None, OFF, PERMUTATION, torch.Generator().manual_seed(0))
    assert torch.equal(out, normalize_images(images)) and none is None


@pytest.mark.parametrize("switch", ["color_jitter", "erasing", "randaugment"])
def test_photometric_ops_never_move_landmarks(switch):
    images, landmarks = dot_batch(np.random.default_rng(1).uniform(30, 80, size=(8, 2)))
    value = {"color_jitter": 0.1, "erasing": 1.0, "randaugment": 5}[switch]
    cfg = dataclasses.replace(OFF, **{switch: value})
    draws = draw_augment(cfg, 8, (S, S), torch.Generator().manual_seed(2))
    if switch == "randaugment":  # colour ops only, both layers, every image
        colour = [OPS.index(op) for op in OPS if op not in GEOMETRIC]
        ops = torch.tensor(colour)[torch.arange(16) % len(colour)].reshape(8, 2)
        draws.randaugment = dataclasses.replace(draws.randaugment, ops=ops, applied=torch.ones(8, 2, dtype=torch.bool))
    out, moved = apply_augment(images, landmarks, draws, cfg, PERMUTATION)
    assert moved is not None and torch.equal(moved, landmarks)
    assert not torch.allclose(out, normalize_images(images), atol=1e-3)  # the pixels did change


def test_erasing_blackens_one_box_of_2_to_10_percent():
    images = torch.full((64, 3, S, S), 200, dtype=torch.uint8)
    cfg = dataclasses.replace(OFF, erasing=0.5)
    out, _ = augment_batch(images, None, cfg, PERMUTATION, torch.Generator().manual_seed(3))
    black = (out == -1.0).all(1)  # erased to 0 before normalisation
    fraction = black.float().mean((1, 2))
    erased = fraction > 0
    assert 20 < int(erased.sum()) < 44  # p 0.5 of 64
    assert (fraction[erased] > 0.02 - 0.01).all() and (fraction[erased] < 0.1 + 0.01).all()  # whole-pixel rounding
    rows, columns = black.any(2), black.any(1)
    assert torch.equal(black.sum((1, 2)), rows.sum(1) * columns.sum(1))  # a rectangle
    assert torch.equal(out[~erased], normalize_images(images[~erased]))


def test_crop_boxes_and_jitter_factors_follow_the_released_ranges():
    draws = draw_augment(RELEASED, 2000, (S, S), torch.Generator().manual_seed(4))
    area = draws.crop_boxes[:, 2] * draws.crop_boxes[:, 3] / S**2
    assert area.min() >= 0.9 - 1e-5 and area.max() <= 1.0 + 1e-5
    aspect = draws.crop_boxes[:, 2] / draws.crop_boxes[:, 3]
    assert aspect.min() >= 0.75 - 1e-5 and aspect.max() <= 4 / 3 + 1e-5
    factors, hue = draws.jitter[:, 1:4], draws.jitter[:, 4]  # brightness, contrast, saturation; hue
    assert factors.min() >= 0.9 and factors.max() <= 1.1 and hue.abs().max() <= 0.1
    assert math.isclose(float(factors.mean()), 1.0, abs_tol=0.01) and float(factors.std()) > 0.05
    assert abs(float(draws.erased.float().mean()) - 0.5) < 0.05


def test_a_seed_reproduces_a_batch_and_switches_do_not_shift_other_numbers():
    images, landmarks = dot_batch(np.random.default_rng(2).uniform(30, 80, size=(6, 2)))
    first = augment_batch(images, landmarks, RELEASED, PERMUTATION, torch.Generator().manual_seed(7))
    again = augment_batch(images, landmarks, RELEASED, PERMUTATION, torch.Generator().manual_seed(7))
    other = augment_batch(images, landmarks, RELEASED, PERMUTATION, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])  # type: ignore[arg-type]
    assert not torch.equal(first[0], other[0])
    # Erasing off: the same crops, flips and colours, so images that were not erased come out the same.
    no_erasing = dataclasses.replace(RELEASED, erasing=0.0)
    kept = ~draw_augment(RELEASED, 6, (S, S), torch.Generator().manual_seed(7)).erased
    without = augment_batch(images, landmarks, no_erasing, PERMUTATION, torch.Generator().manual_seed(7))
    assert kept.any() and torch.equal(without[0][kept], first[0][kept])


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"crop_scale": (0.5, 1.5)}, "augment.crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, "augment.crop_scale"),
        ({"color_jitter": -0.1}, "augment.color_jitter"),
        ({"erasing": 1.5}, "augment.erasing"),
        ({"randaugment": 11}, "augment.randaugment"),
        ({"flip": 2.0}, "augment.flip"),
        ({"mixup_alpha": 0.0}, "augment.mixup_alpha"),
    ],
)
def test_bad_values_name_their_key(changes, key):
    with pytest.raises(ConfigError, match=rf"^{key} ") as error:
        dataclasses.replace(AugmentConfig(), **changes).validate()
    assert "\n" not in str(error.value)


def test_mixup_targets_and_dominant_labels():
    torch.manual_seed(0)
    np.random.seed(0)
    mixup = BatchMixup(AugmentConfig(mixup_prob=1.0, mixup_alpha=0.2), num_classes=4)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    landmarks = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    _, soft, dominant, kept = mixup(images, labels, landmarks)
    assert soft is not None and kept is not None and torch.allclose(soft.sum(1), torch.ones(4))
    assert torch.equal(dominant, soft.argmax(1))
    assert torch.equal(kept[:, 0, 0].long(), dominant)  # each image keeps its dominant face's landmarks
    assert mixup(images, labels, None)[3] is None  # a landmark predictor's batch has none to carry
    off = BatchMixup(AugmentConfig(mixup_prob=0.0), num_classes=4)
    assert off(images, labels, landmarks)[1] is None
