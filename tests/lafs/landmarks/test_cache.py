import json
import pickle

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from lafs.errors import DataError
from lafs.landmarks.align import align_face
from lafs.landmarks.cache import CacheInfo, LandmarkCache, merge_caches, shard_range
from lafs.landmarks.extract import extract_landmarks
from lafs.landmarks.mediapipe import FaceMeshDetector, five_points_from_mesh
from tests.conftest import grey_image
from tools.landmarks import main


def info(**changes) -> CacheInfo:
    return CacheInfo(
        **{
            "dataset": "d",
            "num_images": 6,
            "landmark_set": "mediapipe49",
            "image_size": 112,
            "detector": "test",
            **changes,
        }
    )


def test_shard_ranges_tile_the_dataset():
    blocks = [shard_range(10, i, 3) for i in range(3)]
    assert [list(b) for b in blocks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError):
        shard_range(10, 3, 3)


def test_done_is_only_marked_at_flush(tmp_path):
    cache = LandmarkCache.create(tmp_path / "c", info())
    cache.write(np.array([1, 4]), np.ones((2, 49, 2), np.float32), np.array([True, False]))
    assert not LandmarkCache.open(tmp_path / "c").done.any()  # a kill now loses the chunk, never half of it
    cache.flush()
    reopened = LandmarkCache.open(tmp_path / "c")
    assert reopened.done.tolist() == [False, True, False, False, True, False]
    assert reopened.info.processed == 2 and reopened.info.found == 1
    landmarks, found = reopened.lookup(1)
    assert found and landmarks.shape == (49, 2) and landmarks.dtype == np.float32
    assert not reopened.lookup(4)[1] and not reopened.lookup(0)[1]


def test_a_read_only_cache_pickles_as_its_path(tmp_path):
    writer = LandmarkCache.create(tmp_path / "c", info(num_images=5000))
    writer.write(np.array([4999]), np.full((1, 49, 2), 7.0, np.float32), np.array([True]))
    writer.flush()
    reader = LandmarkCache.open(tmp_path / "c")
    payload = pickle.dumps(reader)
    assert len(payload) < 2000  # the landmarks alone are 5000 x 49 x 2 x 4 bytes = 1.96 MB
    clone = pickle.loads(payload)
    assert isinstance(clone.landmarks, np.memmap) and clone.lookup(4999)[1] and clone.lookup(4999)[0][0, 0] == 7.0
    assert len(pickle.dumps(writer)) > 1_900_000  # a writable one keeps its arrays (its pending writes with them)


def test_reopening_with_other_settings_is_refused(tmp_path):
    LandmarkCache.create(tmp_path / "c", info())
    with pytest.raises(DataError, match="landmark_set=mediapipe49"):
        LandmarkCache.create(tmp_path / "c", info(landmark_set="mediapipe196"))


@pytest.mark.parametrize("damage", ["no_meta", "bad_format", "wrong_shape"])
def test_damaged_caches_fail_in_one_line(tmp_path, damage):
    LandmarkCache.create(tmp_path / "c", info())
    meta = tmp_path / "c" / "meta.json"
    if damage == "no_meta":
        meta.unlink()
    elif damage == "bad_format":
        meta.write_text(json.dumps({"format": "something else"}))
    else:
        np.save(tmp_path / "c" / "found.npy", np.zeros(5, bool))
    with pytest.raises(DataError, match=str(tmp_path / "c")):
        LandmarkCache.open(tmp_path / "c")


def test_merge_needs_every_image(tmp_path):
    a = LandmarkCache.create(tmp_path / "a", info(shard_index=0, shard_count=2))
    a.write(np.arange(3), np.full((3, 49, 2), 1, np.float32), np.ones(3, bool))
    a.flush()
    with pytest.raises(DataError, match="3 images are in no finished shard"):
        merge_caches([tmp_path / "a"], tmp_path / "merged")
    b = LandmarkCache.create(tmp_path / "b", info(shard_index=1, shard_count=2))
    b.write(np.arange(3, 6), np.full((3, 49, 2), 2, np.float32), np.zeros(3, bool))
    b.flush()
    merged = merge_caches([tmp_path / "a", tmp_path / "b"], tmp_path / "merged2")
    assert merged.complete and merged.found.tolist() == [True] * 3 + [False] * 3
    assert merged.landmarks[4, 0, 0] == 2


def test_extraction_on_synthetic_faces_matches_their_exact_landmarks(face_folder, tmp_path):
    root, items = face_folder
    report = extract_landmarks(root, tmp_path / "cache", landmark_set="mediapipe196", progress=False)
    cache = report.cache
    assert report.processed == 12 and cache.complete and report.remaining == 0
    # Measured: MediaPipe finds 39 of 40 synthetic faces, 2.3 px mean error against the drawn landmarks.
    assert report.found >= 10
    errors = [
        np.linalg.norm(cache.landmarks[i] - items[i]["landmarks"], axis=1).mean() for i in range(12) if cache.found[i]
    ]
    assert np.mean(errors) < 4.0


def test_resumed_and_sharded_extraction_equal_one_run(face_folder, tmp_path):
    root, _ = face_folder
    whole = extract_landmarks(root, tmp_path / "whole", landmark_set="mediapipe49", progress=False).cache
    first = extract_landmarks(root, tmp_path / "resumed", landmark_set="mediapipe49", max_images=5, progress=False)
    assert first.remaining == 7 and first.cache.info.processed == 5
    second = extract_landmarks(root, tmp_path / "resumed", landmark_set="mediapipe49", progress=False)
    assert second.processed == 7 and second.cache.complete
    np.testing.assert_array_equal(second.cache.landmarks, whole.landmarks)
    np.testing.assert_array_equal(second.cache.found, whole.found)
    for index in range(2):
        extract_landmarks(
            root, tmp_path / f"shard{index}", landmark_set="mediapipe49", shard=(index, 2), workers=2, progress=False
        )
    merged = merge_caches([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged")
    np.testing.assert_array_equal(merged.landmarks, whole.landmarks)


def test_extraction_on_the_astronaut_and_a_face_free_image(tmp_path):
    with FaceMeshDetector(refine_landmarks=True) as detector:
        aligned, _ = align_face(astronaut(), five_points_from_mesh(detector(astronaut())))
    (tmp_path / "data" / "a").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "data" / "a" / "astronaut.png"), cv2.cvtColor(aligned, cv2.COLOR_RGB2BGR))
    # Twice the size: the cache must hold model (112 px) coordinates whatever the stored size.
    big = cv2.resize(aligned, (224, 224), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "data" / "a" / "big.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    grey_image(tmp_path / "data" / "a" / "grey.png")
    assert (
        main(
            [
                "--input",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "cache"),
                "--workers",
                "1",
                "--landmark-set",
                "mediapipe49",
            ]
        )
        == 0
    )
    cache = LandmarkCache.open(tmp_path / "cache")
    assert cache.found.tolist() == [True, True, False]
    assert np.linalg.norm(cache.landmarks[0] - cache.landmarks[1], axis=1).mean() < 1.5


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "c")]) == 2
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "c"), "--shard", "2/2"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)


def test_landmarks_no_detector_gives_count_as_not_found(tmp_path, caplog):
    # A damaged or foreign cache with NaN or 1e30 points: training went on with NaN losses (every step skipped) or
    # crops of nothing. They are now faces without landmarks (the template, marked invalid), with one warning.
    cache = LandmarkCache.create(tmp_path / "c", info(num_images=4))
    points = np.full((4, 49, 2), 56.0, np.float32)
    points[1, 3] = np.nan
    points[2, 0] = 1e30
    points[3, :] = [-100.0, 220.0]  # within an image's size outside a 112 crop: a face cut by the border, kept
    cache.write(np.arange(4), points, np.ones(4, bool))
    cache.flush()
    with caplog.at_level("WARNING", logger="lafs.landmarks"):
        assert [cache.lookup(i)[1] for i in range(4)] == [True, False, False, True]
    assert caplog.text.count("not finite or lie far outside the image") == 1
