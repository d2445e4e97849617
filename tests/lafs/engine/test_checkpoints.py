"""Checkpoints: atomic, rotated, found again by resume=auto, and never a pickle that can run code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from lafs.engine.checkpoints import (
    TASK_STATE,
    ProcessLocal,
    TrainState,
    checkpoints,
    load_checkpoint,
    resume,
    resume_candidates,
    save_checkpoint,
)
from lafs.errors import ConfigError, DataError

MARKER = Path("/tmp/lafs-test-pickle-ran")  # a payload that runs would create it


class Payload:
    """Unpickling this runs code: it creates MARKER."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(MARKER),))


def setup(tmp_path: Path) -> tuple[Accelerator, torch.nn.Module, TrainState, torch.nn.Module, Path]:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    extra = torch.nn.Linear(3, 1)  # an EMA teacher, say: saved as safetensors beside the model
    return accelerator, model, TrainState(), extra, tmp_path / "checkpoints"


def test_rotation_keeps_the_newest_and_resume_restores_everything(tmp_path):
    accelerator, model, state, extra, folder = setup(tmp_path)
    (folder / ".tmp-step_00000004").mkdir(parents=True)  # a save that died half-way
    (folder / "notes").mkdir()  # not ours: never deleted
    for step in (2, 4, 6, 8):
        state.step, state.best_score = step, step / 10
        save_checkpoint(accelerator, folder, state, [extra], keep=2)
    assert [p.name for p in checkpoints(folder)] == ["step_00000006", "step_00000008"]
    assert (folder / "notes").is_dir() and not (folder / ".tmp-step_00000004").exists()
    assert not list(folder.glob("*/custom_checkpoint_*.pkl"))  # the run's own state is never pickled
    assert resume_candidates("auto", folder) == [folder / "step_00000008", folder / "step_00000006"]
    assert resume_candidates("", folder) == [] and resume_candidates("auto", tmp_path / "none") == []
    saved = {k: v.clone() for k, v in extra.state_dict().items()}
    with torch.no_grad():
        model.weight.zero_()
        extra.weight.zero_()
    fresh = TrainState()
    assert resume(accelerator, resume_candidates("auto", folder), True, fresh, [extra]) == folder / "step_00000008"
    assert (fresh.step, fresh.best_score) == (8, 0.8) and model.weight.abs().sum() > 0
    assert torch.equal(extra.weight, saved["weight"])
    with pytest.raises(ConfigError, match="no such checkpoint"):
        resume_candidates(str(tmp_path / "missing"), folder)
    with pytest.raises(ConfigError, match=r"not a checkpoint folder .a run directory: use resume=auto"):
        resume_candidates(str(tmp_path), folder)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    accelerator, _, state, extra, folder = setup(tmp_path)
    for step in (2, 4):
        state.step = step
        save_checkpoint(accelerator, folder, state, [extra], keep=3)
    newest = folder / "step_00000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:20])  # a full disk cut it short
    fresh = TrainState()
    resumed = resume(accelerator, resume_candidates("auto", folder), True, fresh, [extra])
    assert resumed == folder / "step_00000002" and fresh.step == 2
    assert "step_00000004: cannot load this checkpoint" in caplog.text and "trying the previous" in caplog.text
    with pytest.raises(DataError, match=r"step_00000004: cannot load this checkpoint: ") as error:
        named = resume_candidates(str(folder / "step_00000004"), folder)  # named: must load
        resume(accelerator, named, False, TrainState(), [extra])
    assert "\n" not in str(error.value)


def test_planted_pickles_never_run(tmp_path):
    accelerator, _, state, extra, folder = setup(tmp_path)
    MARKER.unlink(missing_ok=True)
    state.step = 2
    path = save_checkpoint(accelerator, folder, state, [extra], keep=3)
    # accelerate unpickles custom_checkpoint_*.pkl with weights_only=False: it is shown the folder without them.
    (path / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))
    load_checkpoint(accelerator, path, TrainState(), [extra])
    assert not MARKER.exists()
    # The files accelerate does read are read with weights_only=True: a payload there is refused in one line.
    (path / "random_states_0.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match="cannot load this checkpoint") as error:
        load_checkpoint(accelerator, path, TrainState(), [extra])
    assert not MARKER.exists() and "\n" not in str(error.value)
    (path / TASK_STATE).unlink()
    with pytest.raises(DataError, match="not a complete lafs checkpoint"):
        load_checkpoint(accelerator, path, TrainState(), [extra])


def test_checkpoints_of_earlier_versions_load_safely(tmp_path):
    # Before the run state moved to safetensors + JSON, accelerate pickled it: the modules, then the train state.
    accelerator, _, state, extra, folder = setup(tmp_path)
    state.step, state.best_score = 3, 0.5
    accelerator.register_for_checkpointing(extra, state)
    legacy = folder / "step_00000003"
    accelerator.save_state(str(legacy))
    accelerator._custom_objects.clear()  # the engine never registers anything (accelerate has no public unregister)
    fresh, copy = TrainState(), torch.nn.Linear(3, 1)
    assert resume(accelerator, resume_candidates("auto", folder), True, fresh, [copy]) == legacy
    assert (fresh.step, fresh.best_score) == (3, 0.5) and torch.equal(copy.weight, extra.weight)
    # Read with weights_only=True: a crafted one cannot run code.
    MARKER.unlink(missing_ok=True)
    (legacy / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match="cannot load this checkpoint"):
        load_checkpoint(accelerator, legacy, TrainState(), [copy])
    assert not MARKER.exists()


def test_a_step_folder_it_did_not_write_is_never_removed(tmp_path):
    accelerator, _, state, extra, folder = setup(tmp_path)
    for name in ("step_00000001", "step_00000004"):
        (folder / name).mkdir(parents=True)
        (folder / name / "notes.txt").write_text("mine")
    for step in (2, 3):
        state.step = step
        save_checkpoint(accelerator, folder, state, [extra], keep=1)  # rotation passes over step_00000001
    assert (folder / "step_00000001" / "notes.txt").read_text() == "mine"
    assert resume_candidates("auto", folder) == [folder / "step_00000003"]  # only checkpoints are candidates
    state.step = 4
    with pytest.raises(DataError, match="not written by this program"):
        save_checkpoint(accelerator, folder, state, [extra], keep=1)
    assert sorted(p.name for p in (folder / "step_00000004").iterdir()) == ["notes.txt"]


class RankState(ProcessLocal):
    """State that differs between processes; loading keeps every process's value it is handed."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = torch.tensor([value])
        self.files: list[Path] = []

    def process_state(self) -> dict[str, torch.Tensor]:
        return {"value": self.value}

    def load_process_state(self, files: list[Path]) -> None:
        self.files = files
        self.value = torch.cat([load_file(str(file))["value"] for file in files])


def test_process_local_state_is_saved_by_every_process_and_handed_back_whole(tmp_path):
    accelerator, _, state, extra, folder = setup(tmp_path)
    state.step = 2
    path = save_checkpoint(accelerator, folder, state, [extra, RankState(3.0)], keep=2)
    assert sorted(load_file(str(path / TASK_STATE))) == ["0.bias", "0.weight"]  # not in the main process's file
    # What the second process of a 2-process run would have written beside this process's file.
    save_file({"value": torch.tensor([5.0])}, str(path / "task_state_1_rank1.safetensors"))
    restored = RankState(0.0)
    load_checkpoint(accelerator, path, TrainState(), [extra, restored])
    assert restored.files == [path / "task_state_1_rank0.safetensors", path / "task_state_1_rank1.safetensors"]
    assert restored.value.tolist() == [3.0, 5.0]
    (path / "task_state_1_rank0.safetensors").unlink()
    with pytest.raises(DataError, match=r"cannot load this checkpoint: task_state_1_rank0\.safetensors is missing$"):
        load_checkpoint(accelerator, path, TrainState(), [extra, RankState(0.0)])
