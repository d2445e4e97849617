"""One landmark set per run: it follows the data's landmark cache or the init encoder, and a conflict is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finetune.train import main as finetune
from lafs.landmarks.extract import extract_landmarks
from lafs.pretrain import main as pretrain
from tests.finetune.test_train import DEMO as FINETUNE_DEMO
from tests.lafs.test_pretrain import TINY as PRETRAIN_DEMO  # configs/pretrain/demo.yaml: mediapipe49


@pytest.fixture(scope="module")
def caches(face_folder: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("caches")
    return {name: extract_landmarks(face_folder[0], root / name, name, progress=False).cache.path
            for name in ("mediapipe196", "mediapipe49")}  # fmt: skip


def _saved_sets(run: Path) -> tuple[str, str]:
    saved = yaml.safe_load((run / "config.yaml").read_text())
    return saved["data"]["landmark_set"], saved["encoder"]["landmark_set"]


def test_the_set_follows_the_cache_then_the_init_encoder(
    face_folder: tuple[Path, list], caches: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = f"data.path={face_folder[0]}"
    with caplog.at_level("INFO", logger="lafs.engine"):  # the demo config says mediapipe49, the cache holds 196
        assert pretrain([*PRETRAIN_DEMO, data, f"data.landmarks={caches['mediapipe196']}", "max_steps=1",
                         f"output_dir={tmp_path / 'pre'}"]) == 0  # fmt: skip
    assert _saved_sets(tmp_path / "pre") == ("mediapipe196", "mediapipe196")
    assert "landmark set mediapipe196, as data.landmarks=" in caplog.text
    assert "(the config said mediapipe49)" in caplog.text
    # Resuming with the keys the log line names (or without them) continues the same run.
    sets = ["data.landmark_set=mediapipe196", "encoder.landmark_set=mediapipe196"]
    assert pretrain([*PRETRAIN_DEMO, data, f"data.landmarks={caches['mediapipe196']}", "max_steps=2", *sets,
                     f"output_dir={tmp_path / 'pre'}"]) == 0  # fmt: skip
    # Fine-tuning's demo config also says mediapipe49; the pretrained encoder fixes 196.
    assert finetune([*FINETUNE_DEMO, data, f"init={tmp_path / 'pre'}", f"output_dir={tmp_path / 'fine'}"]) == 0
    assert _saved_sets(tmp_path / "fine") == ("mediapipe196", "mediapipe196")


def test_a_cache_and_an_init_encoder_that_disagree_are_one_line(
    face_folder: tuple[Path, list], caches: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = f"data.path={face_folder[0]}"
    assert pretrain([*PRETRAIN_DEMO, data, f"data.landmarks={caches['mediapipe196']}", "max_steps=1",
                     f"output_dir={tmp_path / 'pre'}"]) == 0  # fmt: skip
    capsys.readouterr()
    args = [*FINETUNE_DEMO, data, f"init={tmp_path / 'pre'}", f"data.landmarks={caches['mediapipe49']}"]
    assert finetune([*args, f"output_dir={tmp_path / 'fine'}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: landmark sets disagree: data.landmarks=") and error.count("\n") == 1
    assert "has mediapipe49" in error and f"init={tmp_path / 'pre'} has mediapipe196" in error
