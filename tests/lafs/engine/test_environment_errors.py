"""The environment's failures at the entry points: a full disk and Ctrl-C are one line, and leave whole files only."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import lafs.engine.checkpoints
import lafs.tasks.pretrain
from lafs.engine.checkpoints import checkpoints
from lafs.pretrain import main as pretrain
from tests.lafs.test_pretrain import TINY


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real, calls = lafs.engine.checkpoints.save_file, []

    def fills_the_disk(tensors: dict, path: str) -> None:  # the second checkpoint finds the disk full
        calls.append(path)
        if "step_00000004" in path:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(tensors, path)

    monkeypatch.setattr(lafs.engine.checkpoints, "save_file", fills_the_disk)
    out = tmp_path / "run"
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=4"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and error.endswith("/task_state.safetensors: No space left on device")
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step_00000002"]  # the earlier one, whole
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_ctrl_c_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real = lafs.tasks.pretrain.PretrainTask.training_step

    def interrupted(self: lafs.tasks.pretrain.PretrainTask, batch: dict, step: int) -> dict:
        if step == 3:
            raise KeyboardInterrupt
        return real(self, batch, step)

    monkeypatch.setattr(lafs.tasks.pretrain.PretrainTask, "training_step", interrupted)
    out = tmp_path / "run"
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=6"]) == 130
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1] == "interrupted: finished checkpoints and outputs are kept; the same command resumes"
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step_00000002"]
    monkeypatch.undo()
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=6"]) == 0  # and the same command resumes


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    assert pretrain([*TINY, f"output_dir={tmp_path / 'notes.txt'}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("notes.txt: exists and is not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_a_read_only_file_system_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Tests run as root here, where permissions cannot make a folder read-only: the file system's answer is patched in.
    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    out = tmp_path / "run"
    assert pretrain([*TINY, f"output_dir={out}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {out}: Read-only file system"


def test_a_save_that_never_finished_is_removed_at_the_next_start(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=2"]) == 0
    stale = out / "checkpoints" / ".tmp-step_00000003"  # a kill -9, or another machine, in the middle of a save
    stale.mkdir()
    (stale / "random_states_1.pkl").write_bytes(b"half")
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=4"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
