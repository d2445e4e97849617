"""The run-level config every training stage shares: `RunConfig` (where, how long, how often) and `OptimConfig`.

A stage's config subclasses both and adds its own sections; a field redeclared in a subclass keeps its place and
takes the stage's default (``output_dir``, ``num_workers``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lafs.data.open import SYNTHETIC, DatasetConfig
from lafs.data.synthetic import SyntheticFacesConfig
from lafs.errors import ConfigError


@dataclass
class OptimConfig:
    """What the engine itself needs of the optimisation; stages add their learning-rate recipe."""

    epochs: int = 10  # passes over the training set; the schedules span them all
    batch_size: int = 64  # images per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    clip_grad: float = 0.0  # max gradient norm; 0 turns clipping off

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise ConfigError(f"optim.{key} must be >= 1, got {getattr(self, key)}")
        if self.clip_grad < 0:
            raise ConfigError(f"optim.clip_grad must be >= 0 (0 = off), got {self.clip_grad}")


@dataclass
class RunConfig:
    """Where a run writes, how long it trains, how often it logs, checkpoints and validates."""

    output_dir: Path = Path("runs/train")  # the run directory: config, checkpoints, logs, exported weights
    max_steps: int | None = None  # stop after this many optimiser steps; the schedules still span all epochs
    resume: str = "auto"  # "auto" (newest checkpoint in output_dir, if any), a checkpoint path, or "" (fresh)
    seed: int = 0  # weights, sampling order and augmentation all derive from it
    data: DatasetConfig = field(default_factory=lambda: DatasetConfig(path=SYNTHETIC))  # path "synthetic": built-in
    synthetic: SyntheticFacesConfig = field(default_factory=SyntheticFacesConfig)  # used when data.path=synthetic
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # bf16 on GPUs that have it; "no" on CPU
    num_workers: int = 2  # data-loading processes per training process (kept alive across epochs)
    # torch threads per training process; 0: this machine's cores shared among processes and loader workers, so
    # they do not oversubscribe the CPU (torch's default, every core per process, ran 6-10x slower on 2 busy cores).
    threads: int = 0
    checkpoint_every: int = 500  # optimiser steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept; older ones are deleted
    log_every: int = 10  # optimiser steps between log lines
    eval_every: int = 0  # optimiser steps between validations (0 = only at the end, when the stage has eval sets)
    dump_rank_weights: bool = False  # each process writes a hash of its trained weights at the end (DDP sync check)

    def validate(self) -> None:
        for key in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("seed", "num_workers", "threads", "eval_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0 or null, got {self.max_steps}")
