"""Landmark sources (lafs.landmarks.sources): the template scaled to any face size, registered by name."""

from __future__ import annotations

import numpy as np

from lafs.landmarks.sets import get_landmark_set
from lafs.landmarks.sources import TemplateLandmarks, scaled_template
from lafs.registry import LANDMARK_SOURCES


def test_the_template_scales_with_the_face_and_keeps_its_set() -> None:
    landmark_set = get_landmark_set("mediapipe49")
    at_112 = scaled_template("mediapipe49", 112, 112)
    assert at_112.dtype == np.float32 and at_112.shape == (49, 2)
    np.testing.assert_allclose(at_112, landmark_set.template * 112 / landmark_set.image_size, rtol=1e-6)
    wide = scaled_template("mediapipe49", 224, 56)  # x doubles, y halves
    np.testing.assert_allclose(wide, at_112 * np.array([2.0, 0.5], np.float32), rtol=1e-6)


def test_the_template_source_never_misses() -> None:
    source = LANDMARK_SOURCES.get("template")("mediapipe196")
    assert isinstance(source, TemplateLandmarks)
    landmarks, valid = source(np.zeros((64, 80, 3), np.uint8))
    np.testing.assert_array_equal(landmarks, scaled_template("mediapipe196", 80, 64))
    assert valid.shape == (196,) and valid.all()
    assert "mediapipe" in LANDMARK_SOURCES
