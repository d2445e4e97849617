"""The task contract's defaults and its face-data helpers, tested directly (the tasks' own tests run it end to end)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from lafs.data.synthetic import SyntheticFacesConfig
from lafs.engine import RunConfig, RunContext, Task
from lafs.errors import ConfigError
from lafs.landmarks.cache import CacheInfo, LandmarkCache


def tiny_config(tmp_path: Path, **changes: object) -> RunConfig:
    cfg = RunConfig(output_dir=tmp_path / "run", **changes)  # type: ignore[arg-type]
    cfg.synthetic = SyntheticFacesConfig(num_identities=3, images_per_identity=2)
    return cfg


def test_defaults_do_nothing_and_the_two_required_hooks_say_so(tmp_path: Path) -> None:
    task = Task(tiny_config(tmp_path))
    with pytest.raises(NotImplementedError):
        task.learning_rate(0)
    with pytest.raises(NotImplementedError):
        task.training_step({}, 0)
    with pytest.raises(NotImplementedError):
        task.build_dataset(None)  # type: ignore[arg-type]
    assert task.weight_decay(3) is None and task.log_values(3, {"loss": 1.0}) == {}
    assert not task.validates and task.validate(3) == {} and task.export(tmp_path, 3) == {}
    assert task.resolved_config() is task.cfg
    with pytest.raises(RuntimeError, match="before the engine set the model"):
        task.synced_weights()


def test_setup_keeps_the_run_and_epochs_are_fractional(tmp_path: Path) -> None:
    task = Task(tiny_config(tmp_path))
    task.setup(RunContext(accelerator=None, state=None, steps_per_epoch=4, total_batch=8, total_steps=40))  # type: ignore[arg-type]
    assert task.epoch(0) == 0.0 and task.epoch(6) == 1.5 and task.run.total_steps == 40


def test_open_faces_opens_the_configured_data(tmp_path: Path) -> None:
    task = Task(tiny_config(tmp_path))
    faces = task.open_faces()
    assert task.faces is faces and len(faces) == 6 and faces.num_classes == 3
    assert faces[0]["landmarks"].shape == (196, 2)  # data.landmark_set's default, mediapipe196


def cache_of(tmp_path: Path, landmark_set: str) -> Path:
    info = CacheInfo("d", 6, landmark_set, 112, "test")
    LandmarkCache.create(tmp_path / f"cache-{landmark_set}", info)
    return tmp_path / f"cache-{landmark_set}"


def test_a_landmark_cache_fixes_the_landmark_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config(tmp_path)
    cfg.data.landmarks = str(cache_of(tmp_path, "mediapipe49"))
    task = Task(cfg)
    assert task.landmark_set_sources() == {f"data.landmarks={cfg.data.landmarks}": "mediapipe49"}
    with caplog.at_level(logging.INFO, logger="lafs.engine"):
        task.follow_landmark_set()
    assert cfg.data.landmark_set == "mediapipe49" and "data.landmark_set=mediapipe49" in caplog.text


def test_a_resumed_run_keeps_its_set_and_disagreeing_sources_are_one_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    (cfg.output_dir / "checkpoints").mkdir(parents=True)
    (cfg.output_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"landmark_set": "mediapipe196"}}))
    cfg.data.landmarks = str(cache_of(tmp_path, "mediapipe49"))
    with pytest.raises(ConfigError, match="landmark sets disagree") as excinfo:
        Task(cfg).follow_landmark_set()
    assert "mediapipe49" in str(excinfo.value) and "mediapipe196" in str(excinfo.value)


def test_mediapipe_landmarks_on_synthetic_faces_are_refused(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg.data.landmarks = "mediapipe"
    with pytest.raises(ConfigError, match="synthetic faces carry exact landmarks"):
        Task(cfg).open_faces()
