"""The run's own record: log.jsonl cut back on resume, torn lines skipped, the progress line, the weights hash."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from lafs.engine.run_log import Progress, RunLog, read_log, write_weights_hash


def test_log_lines_are_json_with_nan_as_null_and_read_back(tmp_path: Path) -> None:
    log = RunLog(tmp_path)
    log.write(1, {"loss": 2.5, "lr": 1e-3})
    log.write(2, {"loss": math.nan, "lr": 1e-3})
    log.close()
    assert read_log(tmp_path) == [{"step": 1, "loss": 2.5, "lr": 1e-3}, {"step": 2, "loss": None, "lr": 1e-3}]
    assert (tmp_path / "tensorboard").is_dir()


def test_a_resumed_run_drops_what_its_crashed_predecessor_wrote_after_the_checkpoint(tmp_path: Path) -> None:
    lines = [json.dumps({"step": step, "loss": float(step)}) for step in (1, 2, 3, 4)]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "lo')  # torn by the crash
    log = RunLog(tmp_path, resumed_from=2)
    log.write(3, {"loss": 30.0})
    log.close()
    assert [(r["step"], r["loss"]) for r in read_log(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_a_fresh_run_starts_an_empty_log_and_a_disabled_one_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "log.jsonl").write_text('{"step": 7, "loss": 1.0}\n')
    RunLog(tmp_path).close()
    assert read_log(tmp_path) == []
    other = tmp_path / "rank1"
    quiet = RunLog(other, enabled=False)
    quiet.write(1, {"loss": 1.0})
    quiet.close()
    assert not other.exists()


@pytest.mark.parametrize("line", ["[1, 2]", '{"step": "3"}', "9" * 5000, "[" * 100_000])
def test_lines_no_run_of_ours_wrote_are_skipped(tmp_path: Path, line: str) -> None:
    (tmp_path / "log.jsonl").write_text(f'{line}\n{{"step": 1, "loss": 0.5}}\n')
    assert read_log(tmp_path) == [{"step": 1, "loss": 0.5}]


def test_progress_prints_one_plain_line_per_logged_step_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(enabled=True, total=10, initial=0, name="pretrain")
    progress.step(1, None)
    progress.step(2, {"loss": 1.23456, "lr": 0.00025, "images_per_second": 41.4})
    progress.close()
    assert capsys.readouterr().out == "pretrain step 2/10 loss 1.2346 lr 2.50e-04 img_s 41\n"
    silent = Progress(enabled=False, total=10, initial=0, name="pretrain")
    silent.step(1, {"loss": 1.0, "lr": 1.0, "images_per_second": 1.0})
    silent.close()
    assert capsys.readouterr().out == ""


def test_weights_hash_covers_parameters_in_name_order_not_buffers(tmp_path: Path) -> None:
    model = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 2.0]))
        model.bias.copy_(torch.tensor([3.0, 4.0]))
    path = write_weights_hash(model, tmp_path, rank=1)
    digest = hashlib.sha256()
    for name, values in [("bias", [3.0, 4.0]), ("weight", [1.0, 2.0])]:  # sorted by name
        digest.update(name.encode())
        digest.update(torch.tensor(values).numpy().tobytes())
    assert path == tmp_path / "weights_rank1.sha256" and path.read_text() == digest.hexdigest() + "\n"
    model.running_mean += 1  # each process's own batch statistics: not compared
    assert write_weights_hash(model, tmp_path, rank=1).read_text() == digest.hexdigest() + "\n"
