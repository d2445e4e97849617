"""Faces for the view tests: synthetic images with mediapipe49 landmarks."""

from __future__ import annotations

import pytest

from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig

SET = "mediapipe49"


@pytest.fixture(scope="module")
def faces() -> list[dict]:
    dataset = SyntheticFaces(SyntheticFacesConfig(num_identities=3, images_per_identity=2, landmark_set=SET))
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def face(faces: list[dict]) -> dict:
    return faces[0]
