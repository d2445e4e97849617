"""The evaluation-set landmark cache: written once, reused, recomputed on a mismatch, never over a foreign file, and
MediaPipe on a synthetic .bin in worker processes."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from lafs.data.pairs import BinImages, write_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.landmarks import set_cache
from lafs.landmarks.set_cache import SetLandmarks, set_cache_path, set_landmarks
from lafs.landmarks.sources import scaled_template

K = 49  # mediapipe49


def write_faces_bin(path: Path, pairs: int = 2, seed: int = 0, grey_last: bool = False) -> list[dict]:
    """A .bin of synthetic faces (pair i: items 2i and 2i + 1); with ``grey_last`` the last image is a blank grey."""
    faces = SyntheticFaces(
        SyntheticFacesConfig(num_identities=2, images_per_identity=pairs, landmark_set="mediapipe49", seed=seed)
    )
    items = [faces[i] for i in range(2 * pairs)]
    if grey_last:
        items[-1] = {**items[-1], "image": np.full_like(items[-1]["image"], 127)}
    images = [item["image"] for item in items]
    write_bin(path, list(zip(images[0::2], images[1::2], strict=True)), [True] * pairs)
    return items


@pytest.fixture
def fake_mediapipe(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace MediaPipe by a deterministic stand-in; the list counts its calls (number of images each)."""
    calls: list[int] = []

    def compute(images, num_images, landmark_set, workers):
        calls.append(num_images)
        landmarks = np.tile(np.linspace(0.1, 0.9, K, dtype=np.float32)[:, None], (num_images, 1, 2))
        return landmarks, np.arange(num_images) % 2 == 0

    monkeypatch.setattr(set_cache, "_compute", compute)
    return calls


def landmarks_of(path: Path, fallback: Path | None = None) -> SetLandmarks:
    return set_landmarks(path, lambda: BinImages(path), len(BinImages(path)), "mediapipe49", fallback_dir=fallback)


def test_cache_is_written_once_then_reused(tmp_path, fake_mediapipe):
    write_faces_bin(tmp_path / "lfw.bin")
    first = landmarks_of(tmp_path / "lfw.bin")
    cache = tmp_path / "lfw.bin.landmarks-mediapipe49.npz"
    assert first.computed and first.path == cache == set_cache_path(tmp_path / "lfw.bin", "mediapipe49")
    assert first.landmarks.shape == (4, K, 2) and first.found.tolist() == [True, False, True, False]
    assert first.missed == 2
    written = cache.stat().st_mtime_ns
    second = landmarks_of(tmp_path / "lfw.bin")
    assert not second.computed and second.path == cache and fake_mediapipe == [4]
    np.testing.assert_array_equal(second.landmarks, first.landmarks)
    np.testing.assert_array_equal(second.found, first.found)
    assert cache.stat().st_mtime_ns == written
    with np.load(cache) as data:
        meta = json.loads(str(data["meta"]))
    assert meta["format"] == "lafs-set-landmarks" and meta["landmark_source"] == "mediapipe"
    assert meta["num_images"] == 4 and len(meta["sha256"]) == 64 and meta["landmark_set"] == "mediapipe49"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lfw.bin", cache.name]  # no temporary left


@pytest.mark.parametrize("change", ["other_images", "more_images"])
def test_a_cache_of_another_set_is_recomputed_with_a_warning(tmp_path, fake_mediapipe, caplog, change):
    write_faces_bin(tmp_path / "lfw.bin", seed=0)
    landmarks_of(tmp_path / "lfw.bin")
    write_faces_bin(tmp_path / "lfw.bin", pairs=3 if change == "more_images" else 2, seed=1)
    with caplog.at_level(logging.WARNING, logger="lafs.landmarks"):
        again = landmarks_of(tmp_path / "lfw.bin")
    assert again.computed and again.path == tmp_path / "lfw.bin.landmarks-mediapipe49.npz"
    assert fake_mediapipe == [4, 6 if change == "more_images" else 4]
    reason = "num_images is 4, the set's is 6" if change == "more_images" else "sha256"
    assert "does not match lfw.bin" in caplog.text and reason in caplog.text and "recomputing" in caplog.text
    assert not landmarks_of(tmp_path / "lfw.bin").computed  # the new cache matches


def test_a_foreign_file_is_left_alone(tmp_path, fake_mediapipe, caplog):
    write_faces_bin(tmp_path / "lfw.bin")
    foreign = tmp_path / "lfw.bin.landmarks-mediapipe49.npz"
    foreign.write_bytes(b"somebody else's file")
    with caplog.at_level(logging.WARNING, logger="lafs.landmarks"):
        result = landmarks_of(tmp_path / "lfw.bin", fallback=tmp_path / "out")
    assert foreign.read_bytes() == b"somebody else's file"
    assert result.path == tmp_path / "out" / foreign.name and "leaving it alone" in caplog.text
    assert not landmarks_of(tmp_path / "lfw.bin", fallback=tmp_path / "out").computed
    # With nowhere else to go, the landmarks are computed and cached nowhere.
    assert landmarks_of(tmp_path / "lfw.bin").path is None


def test_a_read_only_folder_caches_under_the_output_folder(tmp_path, fake_mediapipe, monkeypatch, caplog):
    write_faces_bin(tmp_path / "sets" / "lfw.bin")
    write = set_cache._write

    def read_only(path, *args):
        if path.parent == tmp_path / "sets":
            raise PermissionError(13, "Permission denied")
        write(path, *args)

    monkeypatch.setattr(set_cache, "_write", read_only)
    with caplog.at_level(logging.WARNING, logger="lafs.landmarks"):
        result = landmarks_of(tmp_path / "sets" / "lfw.bin", fallback=tmp_path / "out")
    assert result.path == tmp_path / "out" / "lfw.bin.landmarks-mediapipe49.npz" and result.path.is_file()
    assert "cannot write the landmark cache there (Permission denied)" in caplog.text
    assert "written to" in caplog.text and "not beside the set" in caplog.text
    assert sorted(p.name for p in (tmp_path / "sets").iterdir()) == ["lfw.bin"]
    again = landmarks_of(tmp_path / "sets" / "lfw.bin", fallback=tmp_path / "out")
    assert not again.computed and again.path == result.path and fake_mediapipe == [4]


def test_pixels_scale_fractions_and_use_the_template_where_no_face_was_found():
    landmarks = np.zeros((2, K, 2), np.float32)
    landmarks[0, 0] = (0.25, 0.5)
    template = scaled_template("mediapipe49", 112, 112)
    pixels = SetLandmarks(landmarks, np.array([True, False]), None, True).pixels(112, template)
    assert pixels.dtype == np.float32 and pixels.shape == (2, K, 2)
    np.testing.assert_array_equal(pixels[0, 0], [28.0, 56.0])
    np.testing.assert_array_equal(pixels[1], template)


def test_bin_images_decode_one_at_a_time(tmp_path):
    items = write_faces_bin(tmp_path / "lfw.bin")
    images = BinImages(tmp_path / "lfw.bin")
    assert len(images) == 4 and images.load(2)["index"] == 2
    assert np.abs(images.load(2)["image"].astype(int) - items[2]["image"]).mean() < 3  # JPEG


def test_mediapipe_on_a_synthetic_bin_in_worker_processes(tmp_path):
    items = write_faces_bin(tmp_path / "faces.bin", pairs=3, grey_last=True)
    images = functools.partial(BinImages, str(tmp_path / "faces.bin"))  # what each worker opens
    result = set_landmarks(tmp_path / "faces.bin", images, 6, "mediapipe49", workers=2)
    assert result.computed and not result.found[-1]  # the grey image has no face
    assert result.found[:5].sum() >= 4  # MediaPipe finds almost every synthetic face
    template = scaled_template("mediapipe49", 112, 112)
    pixels = result.pixels(112, template)
    errors = [np.linalg.norm(pixels[i] - items[i]["landmarks"], axis=1).mean() for i in range(5) if result.found[i]]
    assert np.mean(errors) < 4.0, errors  # pixels of the 112 x 112 faces, as the model sees them
    np.testing.assert_array_equal(pixels[-1], template)
