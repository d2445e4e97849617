"""Landmark sources: what a training set's landmarks came from, and the choice a consumer makes (auto, or a warned
departure)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from lafs.errors import ConfigError, DataError
from lafs.landmarks.cache import CacheInfo, LandmarkCache
from lafs.landmarks.provenance import (
    LandmarkChoice,
    check_landmark_source,
    choose_landmark_source,
    data_landmark_source,
)
from lafs.landmarks.sets import get_landmark_set
from lafs.landmarks.sources import scaled_template


def test_auto_picks_the_recorded_source_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="lafs.landmarks"):
        for recorded in ("template", "mediapipe", "predictor"):
            assert choose_landmark_source(recorded) == recorded
            assert choose_landmark_source(recorded, recorded) == recorded  # asking for it is no departure
    assert caplog.text == ""


def test_another_choice_warns_in_one_line(caplog):
    with caplog.at_level(logging.WARNING, logger="lafs.landmarks"):
        assert choose_landmark_source("mediapipe", "template", "runs/ft") == "template"
    assert len(caplog.records) == 1 and "\n" not in caplog.text.strip()
    assert caplog.records[0].getMessage() == (
        "warning: landmarks: using template, but runs/ft was trained with mediapipe landmarks; "
        "its embeddings depart from training"
    )


def test_unknown_names_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"--landmarks: unknown choice 'dlib'"):
        choose_landmark_source("template", "dlib")
    with pytest.raises(ConfigError, match=r"x/config.json: unknown landmark source 'auto'"):
        check_landmark_source("auto", "x/config.json")


def test_a_training_set_s_source(tmp_path):
    assert data_landmark_source("template") == data_landmark_source("") == "template"
    info = CacheInfo("faces", 3, "mediapipe49", 112, "mediapipe 0.10.14 solutions.face_mesh")
    LandmarkCache.create(tmp_path / "cache", info)
    assert data_landmark_source(str(tmp_path / "cache")) == "mediapipe"
    with pytest.raises(ConfigError, match=r"data\.landmarks=none"):
        data_landmark_source("none")
    with pytest.raises(DataError, match="not a landmark cache"):
        data_landmark_source(str(tmp_path / "nowhere"))


def test_caches_written_before_the_record_count_as_mediapipe(tmp_path):
    LandmarkCache.create(tmp_path / "old", CacheInfo("faces", 3, "mediapipe49", 112, "mediapipe 0.10.14"))
    meta_path = tmp_path / "old" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["info"].pop("landmark_source") == "mediapipe"  # what tools.landmarks writes now
    meta_path.write_text(json.dumps(meta))  # ... and what it wrote before: no such key
    assert LandmarkCache.open(tmp_path / "old").info.landmark_source == "mediapipe"
    assert data_landmark_source(str(tmp_path / "old")) == "mediapipe"
    # A cache made another way says so, and an encoder trained on it would record that source.
    other = CacheInfo("faces", 3, "mediapipe49", 112, "exact", landmark_source="template")
    LandmarkCache.create(tmp_path / "other", other)
    assert data_landmark_source(str(tmp_path / "other")) == "template"


def test_a_choice_describes_itself_and_gives_its_landmark_set():
    choice = LandmarkChoice("template", "mediapipe", False, True, "mediapipe49", 112)
    assert choice.describe() == (
        "landmarks: template (the landmark set's template); the encoder was trained with mediapipe (not recorded; "
        "assumed)"
    )
    assert choice.record() == {
        "landmark_source": "template",
        "trained_with": "mediapipe",
        "trained_with_recorded": False,
    }
    np.testing.assert_array_equal(choice.template(), scaled_template("mediapipe49", 112, 112))
    np.testing.assert_array_equal(choice.flip_permutation(), get_landmark_set("mediapipe49").flip_permutation)
    with pytest.raises(DataError, match="landmark set is unknown"):
        LandmarkChoice("template", "template", False, False, None).template()
