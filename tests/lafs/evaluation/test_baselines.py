"""Hand-crafted descriptors: 59-bin uniform LBP histograms per cell, and mean-centred grey pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs.data.collate import normalize_images
from lafs.evaluation.baselines import LBP_BINS, LBP_GRID, HandCraftedEncoder, describe, grey_pixels, lbp_histogram


def test_lbp_cells_are_square_rooted_unit_histograms():
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    cells = lbp_histogram(image).reshape(LBP_GRID * LBP_GRID, LBP_BINS)
    np.testing.assert_allclose((cells**2).sum(axis=1), 1.0, rtol=1e-6)  # sqrt of a histogram that sums to 1


def test_lbp_of_a_flat_face_is_one_pattern():
    """Every neighbour equals the centre: all eight bits set, one uniform bin. The image's outermost pixels see
    neighbours outside it and code otherwise: a 16 x 16 edge cell keeps 240 of 256 pixels in the bin, sqrt(240/256)
    = 0.968246, a corner cell 225, sqrt(225/256) = 0.9375; the 5 x 5 inner cells all 256, 1."""
    cells = lbp_histogram(np.full((112, 112, 3), 77, np.uint8)).reshape(LBP_GRID, LBP_GRID, LBP_BINS)
    assert len(set(np.argmax(cells, axis=-1).ravel().tolist())) == 1
    peak = cells.max(axis=-1)
    np.testing.assert_allclose(peak[1:-1, 1:-1], 1.0)
    np.testing.assert_allclose(peak[0, 1:-1], np.sqrt(240 / 256), rtol=1e-6)
    np.testing.assert_allclose(peak[[0, 0, -1, -1], [0, -1, 0, -1]], 0.9375, rtol=1e-6)


def test_grey_pixels_are_centred_and_blind_to_brightness():
    image = np.random.default_rng(1).integers(0, 200, (112, 112, 3), dtype=np.uint8)
    a, b = grey_pixels(image), grey_pixels(image + 40)
    assert a.shape == (32 * 32,) and abs(float(a.mean())) < 1e-3
    np.testing.assert_allclose(a, b, atol=1.0)  # only rounding of the grey conversion differs


def test_flip_adds_the_mirror_image_and_the_encoder_sees_the_same_pixels():
    images = np.random.default_rng(2).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    plain, flipped = describe(images, "lbp", flip=False), describe(images, "lbp", flip=True)
    mirrored = describe(np.ascontiguousarray(images[:, :, ::-1]), "lbp", flip=False)
    np.testing.assert_allclose(flipped, plain + mirrored, rtol=1e-6)
    batch = normalize_images(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(HandCraftedEncoder("lbp")(batch).numpy(), plain, rtol=1e-6)


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="unknown baseline"):
        HandCraftedEncoder("hog")
