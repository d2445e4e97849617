"""Step checkpoints: written atomically, rotated, and loaded without ever unpickling anything that can run code.

Each checkpoint is built in a hidden ``.tmp-step_N`` folder and renamed to ``step_N`` only once every process has
written its part, so a kill during a save leaves the previous checkpoint as the newest loadable one. The run
directory must be on a filesystem every process sees (one main process renames and rotates for all).

What goes in: `accelerator.save_state` (model as safetensors; optimiser, sampler and random states, which accelerate
loads with ``torch.load(weights_only=True)``), plus the run's own state, which accelerate would pickle and load with
``weights_only=False`` (a crafted checkpoint could then run code): the task's extra modules (EMA teacher, DINO
centre) as ``task_state.safetensors`` and the train state (step, best score) as ``train_state.json``. Loading shows
accelerate a view of the folder without any ``custom_checkpoint_*.pkl``, so nothing planted there is unpickled.

accelerate saves the model and the optimiser from the main process only. State that differs between processes (a
shard of the class centres and its optimiser state, say) belongs to a `ProcessLocal` module: every process writes its
own ``task_state_<i>_rank<r>.safetensors`` and, on loading, is handed every process's file, so a run resumed on
another number of processes can re-split it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as torch_safe_load
from safetensors.torch import load_file, save_file
from torch import nn

from lafs.errors import ConfigError, DataError
from lafs.files import read_json, replace_folder, write_atomic

logger = logging.getLogger("lafs.engine")
_NAME = re.compile(r"^step_(\d+)$")
TASK_STATE = "task_state.safetensors"
TRAIN_STATE = "train_state.json"
MAX_STEP = 2**53  # steps and counts in train_state.json: exact in a float, far beyond any run
TEMPORARY_PREFIX = ".tmp-"  # a checkpoint being written: .tmp-step_N
_PROCESS_FILE = re.compile(r"^task_state_(\d+)_rank(\d+)\.safetensors$")


class ProcessLocal(nn.Module):
    """A checkpointed module whose state differs between processes (a shard of the class centres, say).

    Each process saves `process_state` to its own file; `load_process_state` gets every process's file of the
    checkpoint in process order (any number of them: the run that wrote it may have had another process count).
    """

    def process_state(self) -> dict[str, torch.Tensor]:
        """This process's tensors to save (names without dots are safest; any device, any layout)."""
        raise NotImplementedError

    def load_process_state(self, files: list[Path]) -> None:
        """Restore this process's state from the saved processes' safetensors ``files`` (rank 0 first)."""
        raise NotImplementedError


def process_file(index: int, rank: int) -> str:
    """File name of process ``rank``'s state of the ``index``-th checkpointed module."""
    return f"task_state_{index}_rank{rank}.safetensors"


def process_files(path: Path, index: int) -> list[Path]:
    """Every process's file of the ``index``-th checkpointed module in checkpoint ``path``, rank 0 first."""
    ranks = {}
    for file in path.iterdir():
        match = _PROCESS_FILE.match(file.name)
        if match and int(match.group(1)) == index:
            ranks[int(match.group(2))] = file
    missing = [rank for rank in range(max(ranks, default=0) + 1) if rank not in ranks]
    if missing:
        raise DataError(f"{process_file(index, missing[0])} is missing")
    return [ranks[rank] for rank in range(len(ranks))]


class TrainState:
    """What a checkpoint must restore besides weights: optimiser steps done and the best validation score so far."""

    def __init__(self) -> None:
        self.step = 0
        self.best_score = float("-inf")
        # How the run's steps were made (`BatchLayout`); checkpoints before 2026-12 lack it.
        self.layout: BatchLayout | None = None

    def state_dict(self) -> dict[str, Any]:
        layout = None if self.layout is None else dataclasses.asdict(self.layout)
        return {"step": self.step, "best_score": self.best_score, "layout": layout}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict`'s record; a value out of range is a `ValueError` (a damaged or crafted
        ``train_state.json``: a negative step would truncate the run's log to nothing)."""
        step, best, layout = state["step"], state.get("best_score", float("-inf")), state.get("layout")
        if type(step) is not int or not 0 <= step <= MAX_STEP:
            raise ValueError(f"step must be an integer in [0, {MAX_STEP}], got {step!r}")
        if type(best) not in (int, float) or math.isnan(best) or best == math.inf:
            raise ValueError(f"best_score must be a number (or -Infinity), got {best!r}")
        if layout is not None:
            counts = list(layout.values()) if isinstance(layout, dict) else []
            if not counts or any(type(n) is not int or not 1 <= n <= MAX_STEP for n in counts):
                raise ValueError(f"layout must hold positive integers, got {layout!r}")
            layout = BatchLayout(**layout)
        self.step, self.best_score, self.layout = step, float(best), layout


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How one run makes its optimiser steps: the schedules are counted in these steps, so a resumed run keeps them
    with the same images per step, whatever its number of processes (`check_same_layout`)."""

    processes: int
    batch_size: int  # per process and micro-batch
    grad_accum: int
    steps_per_epoch: int

    @property
    def images_per_step(self) -> int:
        return self.processes * self.batch_size * self.grad_accum

    def describe(self) -> str:
        s = "es" if self.processes > 1 else ""
        return (
            f"{self.images_per_step} images per step ({self.processes} process{s} x batch {self.batch_size} x "
            f"grad_accum {self.grad_accum})"
        )


def check_same_layout(saved: BatchLayout | None, now: BatchLayout, path: Path) -> None:
    """`ConfigError` when a run resumed from the checkpoint ``path`` would take another number of images per step
    than the run that wrote it (another process count, say): its steps per epoch, so its epoch counter and every
    schedule, would change. The same images per step on another process count continue the same schedules (the
    order of the samples then differs from an unbroken run's), said in a log line."""
    if saved is None or saved == now:
        return
    if saved.images_per_step != now.images_per_step:
        hint = f"launch {saved.processes} process{'es' if saved.processes > 1 else ''}"
        accum, rest = divmod(saved.images_per_step, now.processes * now.batch_size)
        if accum >= 1 and rest == 0:
            hint += f", or keep its steps with optim.grad_accum={accum}"
        raise ConfigError(
            f"resume from {path}: that run took {saved.describe()}; this launch takes {now.describe()}, which would "
            f"change its schedules: {hint}"
        )
    if saved.processes != now.processes:
        logger.info(
            f"resuming on {now.processes} process(es) a run made on {saved.processes}: the same "
            f"{now.images_per_step} images per step, so the same schedules (the order of the samples differs from "
            "an unbroken run's)"
        )
    if saved.steps_per_epoch != now.steps_per_epoch:  # the data, not the launch: its folder gained or lost images
        logger.warning(
            f"warning: {now.steps_per_epoch} steps per epoch where the checkpoint's run had {saved.steps_per_epoch} "
            "(the data changed size): the schedules follow the new count"
        )


def checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints in ``folder``, oldest first (a ``step_N`` folder without saved weights is not one)."""
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name)) and is_checkpoint(p)
    ]
    return [p for _, p in sorted(found)]


def remove_unfinished(folder: Path) -> list[str]:
    """Remove the ``.tmp-step_N`` folders of saves that never finished (a killed run, or a machine that failed in
    the middle of one) from the checkpoint folder ``folder``; returns their names. Only the main process calls it,
    at start-up, while it holds the run lock."""
    unfinished = sorted(p for p in folder.glob(f"{TEMPORARY_PREFIX}step_*") if p.is_dir()) if folder.is_dir() else []
    for path in unfinished:
        shutil.rmtree(path, ignore_errors=True)
    return [path.name for path in unfinished]


def is_checkpoint(path: Path) -> bool:
    """Whether the folder ``path`` holds a saved training state (`save_checkpoint`: Accelerate's save_state)."""
    return any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def resume_candidates(resume: str, folder: Path) -> list[Path]:
    """Checkpoints to try, in order: ``auto``: every finished one, newest first; ``""``: none; else that folder."""
    if not resume:
        return []
    if resume == "auto":
        return checkpoints(folder)[::-1]
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"resume={resume}: no such checkpoint folder")
    if not is_checkpoint(path):
        hint = " (a run directory: use resume=auto, or name one of its checkpoints/step_* folders)"
        raise ConfigError(f"resume={resume}: not a checkpoint folder{hint if (path / 'checkpoints').is_dir() else ''}")
    return [path]


def save_checkpoint(
    accelerator: Accelerator, folder: Path, state: TrainState, modules: list[nn.Module], keep: int
) -> Path:
    """Save the full training state as ``folder/step_N`` on every process, then keep the newest ``keep``."""
    final = folder / f"step_{state.step:08d}"
    temporary = folder / f"{TEMPORARY_PREFIX}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:  # a full disk, Ctrl-C, ...: the half-written temporary goes, the previous checkpoints stay as they were
        accelerator.save_state(str(temporary))
        for i, module in enumerate(modules):
            if isinstance(module, ProcessLocal):
                mine = {name: value.detach().cpu().contiguous() for name, value in module.process_state().items()}
                save_file(mine, str(temporary / process_file(i, accelerator.process_index)))
        if accelerator.is_main_process:
            tensors = {
                f"{i}.{name}": value.detach().cpu().contiguous()
                for i, module in enumerate(modules)
                if not isinstance(module, ProcessLocal)
                for name, value in module.state_dict().items()
            }
            save_file(tensors, str(temporary / TASK_STATE))
            write_atomic(temporary / TRAIN_STATE, json.dumps(state.state_dict()) + "\n")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # Re-saving a step after a resume keeps a whole copy throughout; a step_N folder that is not a
            # checkpoint (no weights in it: not written by save_state) is never removed.
            replace_folder(temporary, final, is_checkpoint)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        for old in checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path, state: TrainState, modules: list[nn.Module]) -> None:
    """Restore what `save_checkpoint` wrote; anything missing, damaged or not ours is a one-line `DataError`.

    Checkpoints of lafs before 2026-12 pickled the run state (``custom_checkpoint_*.pkl``: the modules in order, then
    the train state); they are read with ``weights_only=True``, which refuses anything but tensors and plain
    containers, so a crafted one cannot run code. accelerate itself never sees those files.
    """
    ours = (path / TASK_STATE).is_file() and (path / TRAIN_STATE).is_file()
    legacy = sorted(path.glob("custom_checkpoint_*.pkl"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not ours and len(legacy) != len(modules) + 1:
        raise DataError(f"{path}: not a complete lafs checkpoint (no {TASK_STATE} or {TRAIN_STATE})")
    try:
        random_states = path / f"random_states_{accelerator.process_index}.pkl"
        if random_states.is_file():
            # accelerate skips random states it cannot read with a log line: the resumed run would silently differ.
            torch_safe_load(random_states)  # weights_only, as accelerate reads it: a payload there cannot run
        else:
            logger.warning(f"warning: {path} has no random state for process {accelerator.process_index} (written by "
                           "fewer processes): the resumed run draws other random numbers")  # fmt: skip
        with tempfile.TemporaryDirectory() as view:
            # accelerate unpickles every custom_checkpoint_*.pkl with weights_only=False: it gets a view without them.
            for file in path.iterdir():
                if not file.name.startswith("custom_checkpoint_"):
                    (Path(view) / file.name).symlink_to(file.resolve())
            accelerator.load_state(view)
        if ours:
            tensors = load_file(str(path / TASK_STATE))
            for i, module in enumerate(modules):
                if isinstance(module, ProcessLocal):
                    module.load_process_state(process_files(path, i))
                    continue
                prefix = f"{i}."
                module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            state.load_state_dict(read_json(path / TRAIN_STATE))
        else:
            for module, file in zip(modules, legacy, strict=False):
                module.load_state_dict(torch_safe_load(file, map_location="cpu"))
            state.load_state_dict(torch_safe_load(legacy[-1]))
    except Exception as error:  # any failure to read the folder means it is damaged or another run's
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: cannot load this checkpoint: {reason[:300]}") from None


def resume(
    accelerator: Accelerator, candidates: list[Path], fall_back: bool, state: TrainState, modules: list[nn.Module]
) -> Path | None:
    """Load the first of ``candidates`` (`resume_candidates`) that loads; returns it, or None for a fresh start.

    With ``fall_back`` (``resume=auto``) a checkpoint that does not load (truncated by a full disk, say) is skipped
    with a warning for the next candidate; otherwise it must load. The processes decide together: if one cannot load
    a checkpoint, none resumes from it.
    """
    for number, path in enumerate(candidates):
        failure: DataError | None = None
        try:
            load_checkpoint(accelerator, path, state, modules)
        except DataError as error:
            failure = error
        failed = torch.tensor([float(failure is not None)], device=accelerator.device)
        if float(accelerator.reduce(failed, reduction="sum")) == 0:
            return path
        failure = failure or DataError(f"{path}: another process cannot load this checkpoint")
        if not fall_back or number == len(candidates) - 1:
            raise failure
        logger.warning(f"warning: {failure}; trying the previous checkpoint")
    return None
