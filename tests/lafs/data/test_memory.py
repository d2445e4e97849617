"""data.in_memory: every image decoded once, the same items as reading the files, bad files counted."""

from __future__ import annotations

import numpy as np
import pytest

from lafs.data import memory
from lafs.data.open import open_dataset
from lafs.errors import ConfigError
from tests.conftest import write_face_folder


def test_in_memory_items_equal_the_files(tmp_path):
    root, _ = write_face_folder(tmp_path / "faces", identities=3, per_identity=3)
    files = open_dataset(root, image_size=64, landmark_set="mediapipe49")
    held = open_dataset(root, image_size=64, landmark_set="mediapipe49", in_memory=True, shots=2, seed=1)
    reference = open_dataset(root, image_size=64, landmark_set="mediapipe49", shots=2, seed=1)
    assert len(held) == len(reference) == 6 and held.num_classes == files.num_classes == 3
    for i in range(len(held)):
        a, b = held[i], reference[i]
        assert a.keys() == b.keys() and a["label"] == b["label"] and a["index"] == b["index"]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["landmarks"], b["landmarks"])


def test_a_bad_file_is_substituted_and_counted(tmp_path):
    root, _ = write_face_folder(tmp_path / "faces", identities=2, per_identity=3)
    bad = sorted(root.rglob("*.png"))[1]
    bad.write_bytes(b"not an image")
    held = open_dataset(root, image_size=32, landmarks="none", in_memory=True, max_bad_fraction=0.5)
    assert held.bad_records == 1
    assert held[1]["index"] == 2  # the next good record, with its own index and label
    np.testing.assert_array_equal(held[1]["image"], held[2]["image"])


def test_refuses_more_than_half_the_free_memory(tmp_path, monkeypatch):
    root, _ = write_face_folder(tmp_path / "faces", identities=2, per_identity=2)
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    with pytest.raises(ConfigError, match=r"data.in_memory: .* set data.in_memory=false"):
        open_dataset(root, image_size=32, landmarks="none", in_memory=True)
