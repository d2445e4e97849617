import dataclasses

import cv2
import numpy as np
import pytest

from lafs.data.open import SYNTHETIC, DatasetConfig, few_shot_subset, open_dataset
from lafs.data.recordio import RecordHeader, RecordIOWriter, pack_record
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.errors import ConfigError, DataError
from lafs.landmarks import get_landmark_set
from lafs.landmarks.cache import CacheInfo, LandmarkCache
from lafs.landmarks.extract import extract_landmarks
from tests.conftest import grey_image


@pytest.fixture(scope="module")
def face_cache(face_folder, tmp_path_factory):
    root, _ = face_folder
    return extract_landmarks(root, tmp_path_factory.mktemp("cache") / "c", "mediapipe49", progress=False).cache


def test_template_landmarks_by_default(face_folder):
    dataset = open_dataset(face_folder[0], landmark_set="mediapipe49")
    item = dataset[0]
    assert set(item) == {"image", "label", "index", "landmarks", "landmark_valid"}
    np.testing.assert_array_equal(item["landmarks"], get_landmark_set("mediapipe49").template)
    assert item["landmark_valid"].all() and item["landmark_valid"].shape == (49,)


def test_no_landmarks(face_folder):
    assert set(open_dataset(face_folder[0], landmarks="none")[0]) == {"image", "label", "index"}


def test_cached_landmarks_and_the_missing_policy(face_folder, face_cache):
    root, _ = face_folder
    dataset = open_dataset(root, landmarks=str(face_cache.path), landmark_set="mediapipe49")
    found = np.flatnonzero(face_cache.found)
    item = dataset[int(found[0])]
    np.testing.assert_array_equal(item["landmarks"], face_cache.landmarks[found[0]])
    assert item["landmark_valid"].all()
    # Force a miss to see both policies.
    cache = LandmarkCache.open(face_cache.path, writable=True)
    cache.found[3] = False
    cache.found.flush()
    try:
        kept = open_dataset(root, landmarks=str(face_cache.path), landmark_set="mediapipe49")
        assert not kept[3]["landmark_valid"].any()
        np.testing.assert_array_equal(kept[3]["landmarks"], get_landmark_set("mediapipe49").template)
        skipped = open_dataset(
            root, landmarks=str(face_cache.path), landmark_set="mediapipe49", missing_landmarks="skip"
        )
        assert len(skipped) == len(kept) - (~face_cache.found).sum()
        assert 3 not in [skipped[i]["index"] for i in range(len(skipped))]
    finally:
        cache.found[3] = True
        cache.found.flush()


def test_cache_must_fit_the_dataset(face_folder, face_cache, tmp_path):
    root, _ = face_folder
    with pytest.raises(DataError, match="this run wants mediapipe196"):
        open_dataset(root, landmarks=str(face_cache.path), landmark_set="mediapipe196")
    LandmarkCache.create(tmp_path / "small", CacheInfo("x", 5, "mediapipe49", 112, "test"))
    with pytest.raises(DataError, match="cache holds 5 images, the dataset has 12"):
        open_dataset(root, landmarks=str(tmp_path / "small"), landmark_set="mediapipe49")
    LandmarkCache.create(tmp_path / "unfinished", CacheInfo("x", 12, "mediapipe49", 112, "test"))
    with pytest.raises(DataError, match="incomplete"):
        open_dataset(root, landmarks=str(tmp_path / "unfinished"), landmark_set="mediapipe49")


def test_few_shot_subset_is_recorded(face_folder, tmp_path):
    dataset = open_dataset(face_folder[0], shots=2, seed=1, run_dir=tmp_path)
    assert len(dataset) == 6 and np.bincount(dataset.labels).tolist() == [2, 2, 2]
    rows = (tmp_path / "few_shot.csv").read_text().splitlines()
    assert rows[0] == "index,label" and len(rows) == 7
    indices = [int(r.split(",")[0]) for r in rows[1:]]
    assert [dataset[i]["index"] for i in range(6)] == indices


def test_rec_files_open_the_same_way(tmp_path):
    rng = np.random.default_rng(0)
    with RecordIOWriter(tmp_path / "flat.rec") as writer:
        for key in range(4):
            image = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
            payload = cv2.imencode(".png", image)[1].tobytes()
            writer.write(key, pack_record(RecordHeader(0, float(key % 2), key, 0), payload))
    dataset = open_dataset(tmp_path / "flat.rec")
    assert len(dataset) == 4 and dataset.labels.tolist() == [0, 1, 0, 1] and dataset[1]["landmarks"].shape == (196, 2)


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(DataError, match=r"not a \.rec, an image folder"):
        open_dataset(grey_image(tmp_path / "image.png"))
    with pytest.raises(ConfigError, match="fixed image_size"):
        open_dataset(tmp_path, image_size=None)


# ---------------------------------------------------------------------------------------------- synthetic faces --

TINY_SYNTHETIC = SyntheticFacesConfig(num_identities=3, images_per_identity=4, seed=5)


def test_synthetic_faces_open_like_every_other_source():
    dataset = open_dataset(SYNTHETIC, synthetic=TINY_SYNTHETIC, landmark_set="mediapipe49", image_size=64)
    direct = SyntheticFaces(dataclasses.replace(TINY_SYNTHETIC, landmark_set="mediapipe49", image_size=64))
    assert len(dataset) == 12 and dataset.num_classes == 3 and dataset.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    item = dataset[5]
    assert set(item) == {"image", "label", "index", "landmarks", "landmark_valid"}
    assert item["image"].shape == (64, 64, 3) and item["landmarks"].shape == (49, 2) and item["landmark_valid"].all()
    assert (item["label"], item["index"]) == (1, 5)
    np.testing.assert_array_equal(item["image"], direct[5]["image"])
    np.testing.assert_array_equal(item["landmarks"], direct[5]["landmarks"])  # exact landmarks, not the template
    assert set(open_dataset(SYNTHETIC, synthetic=TINY_SYNTHETIC, landmarks="none")[0]) == {"image", "label", "index"}
    assert len(open_dataset("synthetic")) == len(SyntheticFaces(SyntheticFacesConfig()))  # the generator's defaults


def test_synthetic_few_shot_is_recorded_like_the_other_sources(tmp_path):
    dataset = open_dataset(SYNTHETIC, synthetic=TINY_SYNTHETIC, shots=2, seed=3, run_dir=tmp_path)
    assert len(dataset) == 6 and np.bincount(dataset.labels).tolist() == [2, 2, 2] and dataset.num_classes == 3
    rows = (tmp_path / "few_shot.csv").read_text().splitlines()
    indices = [dataset[i]["index"] for i in range(6)]
    assert rows[0] == "index,label" and [int(r.split(",")[0]) for r in rows[1:]] == indices
    expected = few_shot_subset(SyntheticFaces(TINY_SYNTHETIC), 2, 3)  # what fine-tuning selected before
    assert expected.positions.tolist() == indices


def test_a_dataset_config_of_synthetic_faces_is_a_drop_in(tmp_path):
    # The entry points' call: every DatasetConfig field plus the generator's own config.
    data = DatasetConfig(path=SYNTHETIC, landmark_set="mediapipe49", image_size=96, landmarks="", shots=1)
    options = dataclasses.asdict(data)
    dataset = open_dataset(options.pop("path"), run_dir=tmp_path, synthetic=TINY_SYNTHETIC, **options)
    assert len(dataset) == 3 and dataset[0]["image"].shape == (96, 96, 3) and dataset[0]["landmarks"].shape == (49, 2)
    assert TINY_SYNTHETIC.landmark_set == "mediapipe196" and TINY_SYNTHETIC.image_size == 112  # not modified


@pytest.mark.parametrize(
    ("option", "message"),
    [({"landmarks": "some/cache"}, "exact landmarks"), ({"bgr": True}, "RGB"), ({"shots": 0}, "shots")],
)
def test_impossible_synthetic_options_are_config_errors(option, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        open_dataset(SYNTHETIC, synthetic=TINY_SYNTHETIC, **option)
