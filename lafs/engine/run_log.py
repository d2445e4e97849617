"""What a training run writes about itself (main process only): a JSON-lines log, TensorBoard scalars, progress."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


class RunLog:
    """``run_dir/log.jsonl`` (one object per logged step) and ``run_dir/tensorboard``.

    A run resumed from step ``resumed_from`` first drops the lines its crashed predecessor wrote after that step,
    and a line torn by a crash mid-write, so the log reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resumed_from: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        kept = [line for line, record in _records(self.path) if record["step"] <= resumed_from] if resumed_from else []
        self.path.write_text("".join(f"{line}\n" for line in kept))
        self._file = self.path.open("a", encoding="utf-8")
        self._board = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_from or None)

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


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/log.jsonl`` (a line torn by a crash mid-write is left out)."""
    return [record for _, record in _records(run_dir / "log.jsonl")]


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each whole line of a JSON-lines log."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a torn line, or one no run of ours wrote (5,000 digits, 10⁵ deep)
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            found.append((line, record))
    return found


class Progress:
    """A live bar of optimiser steps on a terminal; off a terminal (nohup, cluster job logs, CI) a plain line per log.

    Only the main process shows anything.
    """

    def __init__(self, enabled: bool, total: int, initial: int, name: str) -> None:
        self.enabled, self.total, self.name = enabled, total, name
        self.terminal = sys.stdout.isatty()
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and self.terminal), unit="step")

    def step(self, step: int, record: Mapping[str, float] | None) -> None:
        """Advance to optimiser step ``step``; ``record``: that step's log record, when it was logged."""
        self.bar.update(1)
        if record is None or not self.enabled:
            return
        shown = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
        shown["img_s"] = f"{record['images_per_second']:.0f}"
        if self.terminal:
            self.bar.set_postfix(shown)
        else:
            print(f"{self.name} step {step}/{self.total} " + " ".join(f"{k} {v}" for k, v in shown.items()), flush=True)

    def close(self) -> None:
        self.bar.close()


def write_weights_hash(module: torch.nn.Module, run_dir: Path, rank: int) -> Path:
    """Write the SHA-256 of ``module``'s parameters to ``run_dir/weights_rank<rank>.sha256`` (processes must agree).

    Parameters only: data parallelism keeps them equal, while buffers such as BatchNorm's running statistics are
    updated by each process from its own last batch.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = run_dir / f"weights_rank{rank}.sha256"
    path.write_text(digest.hexdigest() + "\n")
    return path
