"""The landmarks an evaluation gives an encoder: none when it places its own, the template, or MediaPipe's."""

from __future__ import annotations

import numpy as np
import pytest

from lafs.evaluation.landmarks import EvalLandmarks, bin_landmarks
from lafs.landmarks.provenance import LandmarkChoice


def test_a_model_that_places_its_own_landmarks_gets_none(tmp_path):
    for choice in (
        LandmarkChoice("predictor", "predictor", True, False, "mediapipe49"),
        LandmarkChoice("template", "mediapipe", True, False, None),  # an images-only ONNX graph on the template
    ):
        found = bin_landmarks(choice, tmp_path / "never_read.bin", 4)
        assert found.points is None and found.record == {"source": choice.source}
    assert not list(tmp_path.iterdir())


def test_the_template_is_the_encoders_own(tmp_path):
    # No points: the encoder places its own template (a Part fViT's is its patch grid, not the set's template).
    choice = LandmarkChoice("template", "template", True, True, "mediapipe49", 112)
    found = bin_landmarks(choice, tmp_path / "never_read.bin", 3)
    assert found.points is None
    assert found.record == {"source": "template"} and found.describe("lfw") == "lfw: template landmarks"


def test_describe_mediapipe():
    record = {"source": "mediapipe", "cache": None, "computed": True, "images": 8, "no_face": 1}
    assert EvalLandmarks(np.zeros((8, 49, 2)), record).describe("cfp_fp") == (
        "cfp_fp: MediaPipe landmarks of 8 images computed (not cached); 1 without a face got the template"
    )
    with pytest.raises(ValueError, match="no landmarks to compute"):
        bin_landmarks(LandmarkChoice("predictor", "predictor", True, True, "mediapipe49"), "x.bin", 2)
