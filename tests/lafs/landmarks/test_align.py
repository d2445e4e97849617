import numpy as np
import pytest

from lafs.landmarks.align import (
    ARCFACE_TEMPLATE,
    ARCFACE_TEMPLATE_OPENCV,
    align_face,
    estimate_alignment,
    transform_points,
    warp_image,
)


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    linear = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.concatenate([linear, np.array(shift)[:, None]], axis=1)


def test_template_conventions_differ_by_half_a_pixel():
    np.testing.assert_allclose(ARCFACE_TEMPLATE - ARCFACE_TEMPLATE_OPENCV, 0.5)


def test_template_aligns_to_identity():
    np.testing.assert_allclose(estimate_alignment(ARCFACE_TEMPLATE), np.eye(2, 3), atol=1e-9)


def test_recovers_a_known_similarity():
    forward = similarity(17.0, 2.5, (40.0, -12.0))
    photo_points = transform_points(ARCFACE_TEMPLATE, forward)
    matrix = estimate_alignment(photo_points)
    np.testing.assert_allclose(transform_points(photo_points, matrix), ARCFACE_TEMPLATE, atol=1e-3)


def test_warp_follows_the_pixel_centre_convention():
    # Pixel j of a ramp holds j, i.e. value = coordinate - 0.5. Halving the image (x' = x / 2) puts output pixel i's
    # centre i + 0.5 over source coordinate 2i + 1, whose bilinear value is 2i + 0.5.
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    halve = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
    out = warp_image(ramp, halve, size=32)
    np.testing.assert_allclose(out[5, :31], 2 * np.arange(31) + 0.5, atol=1e-3)


def test_align_face_maps_points_onto_the_template():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, size=(300, 260, 3), dtype=np.uint8)
    points = transform_points(ARCFACE_TEMPLATE, similarity(-8.0, 1.7, (30.0, 55.0)))
    aligned, matrix = align_face(photo, points)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    np.testing.assert_allclose(transform_points(points, matrix), ARCFACE_TEMPLATE, atol=1e-3)


@pytest.mark.parametrize("points", [np.zeros((5, 2)), np.ones((4, 2)), np.full((5, 2), np.nan)])
def test_degenerate_points_are_rejected(points):
    with pytest.raises(ValueError):
        estimate_alignment(points)
