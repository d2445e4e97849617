import subprocess
import sys

import numpy as np
import pytest
from skimage.data import astronaut

from lafs.landmarks.align import ARCFACE_TEMPLATE, align_face
from lafs.landmarks.mediapipe import FaceMeshDetector, five_points_from_mesh, normalized_to_pixels
from lafs.registry import LANDMARK_SOURCES
from tests.conftest import ROOT

# Hand-labelled on the 512 x 512 photo (pupil centres and mouth corners, image-left first), project convention.
ASTRONAUT_EYES = np.array([[204.0, 101.0], [245.0, 103.0]])
ASTRONAUT_MOUTH = np.array([[203.0, 140.5], [244.0, 142.0]])


def test_normalized_to_pixels():
    points = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.5], [0.25, 0.5, -0.1]])
    out = normalized_to_pixels(points, width=200, height=100)
    np.testing.assert_allclose(out, [[0, 0, 0], [200, 100, 100], [50, 50, -20]])
    assert out.dtype == np.float32


def test_five_points_prefer_iris_centres():
    mesh = np.zeros((478, 3), dtype=np.float32)
    mesh[468, :2], mesh[473, :2] = (10, 20), (30, 20)
    mesh[1, :2], mesh[61, :2], mesh[291, :2] = (20, 30), (12, 40), (28, 40)
    np.testing.assert_allclose(five_points_from_mesh(mesh), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])


@pytest.fixture(scope="module")
def photo_mesh():
    with FaceMeshDetector(refine_landmarks=True) as detector:
        mesh = detector(astronaut())
    assert mesh is not None, "MediaPipe found no face in the astronaut photo"
    return mesh


def test_finds_the_astronaut_eyes_and_mouth(photo_mesh):
    assert photo_mesh.shape == (478, 3)
    five = five_points_from_mesh(photo_mesh)
    assert np.linalg.norm(five[:2] - ASTRONAUT_EYES, axis=1).max() < 5.0
    assert np.linalg.norm(five[3:] - ASTRONAUT_MOUTH, axis=1).max() < 5.0


def test_finds_the_face_on_a_tight_aligned_crop(photo_mesh):
    aligned, _ = align_face(astronaut(), five_points_from_mesh(photo_mesh))
    with FaceMeshDetector() as detector:
        mesh = detector(aligned)
    assert mesh is not None and mesh.shape == (468, 3)
    errors = np.linalg.norm(five_points_from_mesh(mesh) - ARCFACE_TEMPLATE, axis=1)
    assert errors[:2].max() < 4.0 and errors.max() < 8.5, errors


def test_no_face_returns_none():
    with FaceMeshDetector() as detector:
        assert detector(np.full((112, 112, 3), 127, dtype=np.uint8)) is None


def test_rejects_non_rgb_input():
    with FaceMeshDetector() as detector, pytest.raises(ValueError):
        detector(np.zeros((112, 112), dtype=np.uint8))


def test_landmark_sources_on_the_aligned_astronaut(photo_mesh):
    aligned, _ = align_face(astronaut(), five_points_from_mesh(photo_mesh))
    template, template_valid = LANDMARK_SOURCES.get("template")("mediapipe196")(aligned)
    source = LANDMARK_SOURCES.get("mediapipe")("mediapipe196")
    try:
        found, valid = source(aligned)
        missed, missed_valid = source(np.full((112, 112, 3), 127, dtype=np.uint8))
    finally:
        source.close()
    assert found.shape == template.shape == (196, 2) and found.dtype == np.float32
    assert valid.all() and template_valid.all()
    # The template was derived from this very face, so the live mesh sits on it.
    assert np.linalg.norm(found - template, axis=1).mean() < 3.0
    assert not missed_valid.any()
    np.testing.assert_array_equal(missed, template)


def test_template_source_scales_with_the_image():
    small, _ = LANDMARK_SOURCES.get("template")("mediapipe49")(np.zeros((56, 56, 3), dtype=np.uint8))
    large, _ = LANDMARK_SOURCES.get("template")("mediapipe49")(np.zeros((112, 112, 3), dtype=np.uint8))
    np.testing.assert_allclose(small * 2, large, rtol=1e-6)


# The module alone (numpy and the standard library), without the lafs package: importing torch would take seconds.
QUIET_SCRIPT = """
import importlib.util, sys
from skimage.data import astronaut
spec = importlib.util.spec_from_file_location("mp", "lafs/landmarks/mediapipe.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
detector = module.FaceMeshDetector(refine_landmarks=True, quiet=QUIET_FLAG)
found = [detector(astronaut()) is not None for _ in range(2)]
print("ours", file=sys.stderr)
detector.close()
print(found)
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_a_quiet_detector_keeps_mediapipe_off_stderr(quiet):
    # MediaPipe's C++ logs go to file descriptor 2 from its own threads: only a separate process can count them.
    script = QUIET_SCRIPT.replace("QUIET_FLAG", str(quiet))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[True, True]"
    lines = result.stderr.splitlines()
    if quiet:
        assert lines == ["ours"]  # our own output still gets through
    else:
        assert "ours" in lines and len(lines) > 3  # the XNNPACK / absl / feedback-tensor lines this silences


def test_silenced_stderr_restores_the_descriptor(capfd):
    import os

    from lafs.landmarks.mediapipe import silenced_stderr

    with silenced_stderr():
        os.write(2, b"hidden\n")
    os.write(2, b"shown\n")
    with silenced_stderr(enabled=False):
        os.write(2, b"also shown\n")
    assert capfd.readouterr().err == "shown\nalso shown\n"
