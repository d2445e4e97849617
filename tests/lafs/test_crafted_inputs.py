"""The second reliability pass's own attacks: files and values nobody listed, each a one-line error (or a skip,
counted) that used to be a traceback, a hang, a lost file or a silently wrong result (docs/reliability.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lafs.config import load_config
from lafs.errors import ConfigError, DataError
from lafs.files import read_json
from lafs.pretrain import main as pretrain
from lafs.tasks.pretrain import PretrainConfig
from tests.conftest import assert_bad_value_is_one_line
from tests.lafs.test_pretrain import TINY


def last_error(capsys: pytest.CaptureFixture) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("step", [-5, 10**30, 2.5, True])
def test_a_train_state_with_a_step_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture, step: object) -> None:
    # step -5 made the resumed run cut log.jsonl to nothing, then crash; 1e30 crashed TensorBoard's writer.
    out = tmp_path / "run"
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=2"]) == 0
    state = out / "checkpoints" / "step_00000002" / "train_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "step": step}))
    log = (out / "log.jsonl").read_bytes()
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=4"]) == 2
    assert "cannot load this checkpoint: step must be an integer in [0, 9007199254740992]" in last_error(capsys)
    assert (out / "log.jsonl").read_bytes() == log


def test_json_that_does_not_parse_as_a_small_file_is_a_value_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deep"):
        read_json(deep)
    with pytest.raises(ValueError, match="not a regular file"):
        read_json("/dev/zero")
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}


def test_deep_json_in_the_files_we_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A landmark cache's meta.json, a run's log line: each used to be a RecursionError traceback.
    from lafs.engine.run_log import read_log
    from lafs.landmarks.cache import LandmarkCache

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"not a landmark cache \(meta.json: nested too deep"):
        LandmarkCache.open(cache)
    (cache / "meta.json").write_text("[]")
    with pytest.raises(DataError, match="not a version"):
        LandmarkCache.open(cache)
    run = tmp_path / "run"
    run.mkdir()
    lines = ['{"step": 1, "loss": 2.0}', "[" * 100_000, '{"step": 1' + "0" * 5000 + "}", '{"step": 2, "loss": 1.0}']
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    assert [r["step"] for r in read_log(run)] == [1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("? [a, b]\n: 1\n", "a key must be a name, got list"),
        ("optim:\n  lr: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deep to be one"),
    ],
)
def test_configs_that_no_loader_should_take(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(PretrainConfig, tmp_path / "c.yaml")


def test_a_deep_value_on_the_command_line_and_a_config_that_never_ends() -> None:
    with pytest.raises(ConfigError, match="nested too deep"):
        load_config(PretrainConfig, None, ["optim.lr=" + "[" * 3000 + "]" * 3000])
    with pytest.raises(ConfigError, match="config /dev/zero: not a regular file"):
        load_config(PretrainConfig, "/dev/zero")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        # 100,000-pixel squares: the memory estimate (which counts no input images) said 0.0 GiB, then memory ran out.
        ("data.image_size=100000", "data.image_size"),
        # 1,000 tokens drawn from 49 points: 1.5 GiB of activations repeating the same points.
        ("views.local_landmarks=1000", "views.local_landmarks"),
    ],
)
def test_values_no_face_run_needs(tmp_path: Path, capsys: pytest.CaptureFixture, value: str, key: str) -> None:
    assert_bad_value_is_one_line(pretrain, [*TINY, value], tmp_path / "run", key, capsys)
