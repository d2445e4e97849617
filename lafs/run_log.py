"""What a training run writes about itself: a JSON-lines log and TensorBoard scalars (main process only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLog:
    """``run_dir/log.jsonl`` (one object per logged step) and ``run_dir/tensorboard``.

    A run resumed from step ``resumed_from`` first drops the lines its crashed predecessor wrote after that step,
    so the log reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resumed_from: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        kept = [line for line in self._lines() if json.loads(line)["step"] <= resumed_from] if resumed_from else []
        self.path.write_text("".join(f"{line}\n" for line in kept))
        self._file = self.path.open("a", encoding="utf-8")
        self._board = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_from or None)

    def _lines(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if line] if self.path.exists() else []

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        for key, value in values.items():
            self._board.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._board.close()


def read_log(run_dir: Path) -> list[dict]:
    """The records of ``run_dir/log.jsonl``."""
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
