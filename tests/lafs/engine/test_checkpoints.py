"""Checkpoints: atomic, rotated, found again by resume=auto."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from lafs.engine.checkpoints import TrainState, checkpoints, find_resume_point, save_checkpoint
from lafs.errors import ConfigError, DataError


def test_rotation_keeps_the_newest_and_resume_finds_it(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    folder = tmp_path / "checkpoints"
    (folder / ".tmp-step_00000004").mkdir(parents=True)  # a save that died half-way
    (folder / "notes").mkdir()  # not ours: never deleted
    for step in (2, 4, 6, 8):
        state.step = step
        save_checkpoint(accelerator, folder, step, keep=2)
    assert [p.name for p in checkpoints(folder)] == ["step_00000006", "step_00000008"]
    assert (folder / "notes").is_dir() and not (folder / ".tmp-step_00000004").exists()
    assert find_resume_point("auto", folder) == folder / "step_00000008"
    assert find_resume_point("", folder) is None and find_resume_point("auto", tmp_path / "none") is None
    with torch.no_grad():
        model.weight.zero_()
    state.step = 0
    accelerator.load_state(str(folder / "step_00000006"))
    assert state.step == 6 and model.weight.abs().sum() > 0
    with pytest.raises(ConfigError, match="no such checkpoint"):
        find_resume_point(str(tmp_path / "missing"), folder)


def test_a_step_folder_it_did_not_write_is_never_removed(tmp_path):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    folder = tmp_path / "checkpoints"
    for name in ("step_00000001", "step_00000004"):
        (folder / name).mkdir(parents=True)
        (folder / name / "notes.txt").write_text("mine")
    save_checkpoint(accelerator, folder, 2, keep=1)
    save_checkpoint(accelerator, folder, 3, keep=1)  # rotation passes over step_00000001: not a checkpoint
    assert (folder / "step_00000001" / "notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="not written by this program"):
        save_checkpoint(accelerator, folder, 4, keep=1)
    assert sorted(p.name for p in (folder / "step_00000004").iterdir()) == ["notes.txt"]
