"""Step checkpoints through `accelerator.save_state`, written atomically and rotated.

Each checkpoint is built in a hidden ``.tmp-step_N`` folder and renamed to ``step_N`` only once every process has
written its part, so a kill during a save leaves the previous checkpoint as the newest loadable one. The run
directory must be on a filesystem every process sees (one main process renames and rotates for all).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from lafs.errors import ConfigError, DataError
from lafs.files import replace_folder

_NAME = re.compile(r"^step_(\d+)$")


class TrainState:
    """What a checkpoint must restore besides weights: optimiser steps done and the best validation score so far."""

    def __init__(self) -> None:
        self.step = 0
        self.best_score = float("-inf")

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best_score": self.best_score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.best_score = float(state.get("best_score", float("-inf")))


def checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def is_checkpoint(path: Path) -> bool:
    """Whether the folder ``path`` holds a saved training state (`save_checkpoint`: Accelerate's save_state)."""
    return any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def find_resume_point(resume: str, folder: Path) -> Path | None:
    """``auto``: the newest finished checkpoint (or None); ``""``: None; else that path, which must exist."""
    if not resume:
        return None
    if resume == "auto":
        found = checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"resume={resume}: no such checkpoint folder")
    if not is_checkpoint(path):
        hint = " (a run directory: use resume=auto, or name one of its checkpoints/step_* folders)"
        raise ConfigError(f"resume={resume}: not a checkpoint folder{hint if (path / 'checkpoints').is_dir() else ''}")
    return path


def save_checkpoint(accelerator: Accelerator, folder: Path, step: int, keep: int) -> Path:
    """Save the full training state as ``folder/step_N`` on every process, then keep the newest ``keep``."""
    final = folder / f"step_{step:08d}"
    temporary = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Re-saving a step after a resume keeps a whole copy throughout; a step_N folder that is not a checkpoint
        # (no weights in it: not written by save_state) is never removed.
        try:
            replace_folder(temporary, final, is_checkpoint)
        except DataError:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        for old in [path for path in checkpoints(folder) if is_checkpoint(path)][:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
