"""The run-level config every training stage shares: `RunConfig` (where, how long, how often) and `OptimConfig`.

A stage's config subclasses both and adds its own sections; a field redeclared in a subclass keeps its place and
takes the stage's default (``output_dir``, ``num_workers``, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lafs.config import check_rates, config_to_dict
from lafs.data.open import SYNTHETIC, DatasetConfig
from lafs.data.synthetic import SyntheticFacesConfig
from lafs.errors import ConfigError

logger = logging.getLogger("lafs.engine")
ClipMode = Literal["global", "per_parameter"]
# Keys that change how a run is run or watched, not what it learns: a resumed run may change them freely.
RUN_CONTROL = frozenset(
    {"output_dir", "max_steps", "resume", "replace", "num_workers", "threads", "checkpoint_every", "keep_checkpoints",
     "log_every", "eval_every", "dump_rank_weights", "deterministic", "data.in_memory", "memory_check",
     "max_nonfinite_steps"}
)  # fmt: skip


@dataclass
class OptimConfig:
    """What the engine itself needs of the optimisation; stages add their learning-rate recipe."""

    epochs: int = 10  # passes over the training set; the schedules span them all
    batch_size: int = 64  # images per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    clip_grad: float = 0.0  # max gradient norm; 0 turns clipping off
    # How epoch-valued schedule keys (LR and DINO warm-ups, regulariser weights) are read: "epochs" as written;
    # "relative" as written for their recipe's length (LAFS pretraining 41, fine-tuning 34, ...) and stretched to
    # optim.epochs, so a short run keeps the recipe's proportions.
    schedules: Literal["epochs", "relative"] = "epochs"
    # How clip_grad applies. "global": one norm over every gradient, scaled together (torch's clip_grad_norm_, ours
    # and arcface_torch's). "per_parameter": each parameter's gradient capped at clip_grad on its own (DINO's and the
    # released LAFS pretraining's utils.clip_gradients, at 3.0).
    clip_mode: ClipMode = "global"

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise ConfigError(f"optim.{key} must be >= 1, got {getattr(self, key)}")
        if self.clip_grad < 0:
            raise ConfigError(f"optim.clip_grad must be >= 0 (0 = off), got {self.clip_grad}")
        if self.schedules not in ("epochs", "relative"):
            raise ConfigError(f"optim.schedules must be epochs or relative, got {self.schedules!r}")

    def stretch(self, recipe_epochs: float) -> float:
        """Factor from a recipe's epochs to this run's: ``epochs / recipe_epochs`` under ``schedules=relative``,
        else 1 (keys read as written)."""
        return self.epochs / recipe_epochs if self.schedules == "relative" else 1.0

    def check_recipe(
        self, warmup_epochs: float, lr: float, min_lr: float, decays: Mapping[str, float], recipe_epochs: float = 0.0
    ) -> None:
        """What every stage's learning-rate recipe must satisfy: a warm-up within the run, sensible rates.

        ``recipe_epochs``: the length the stage's ``warmup_epochs`` is written for, under ``schedules=relative``
        (0: the stage does not stretch it).
        """
        limit, name = float(self.epochs), "optim.epochs"
        if self.schedules == "relative" and recipe_epochs > 0:  # stretched, it lies within the run iff this holds
            limit, name = recipe_epochs, "the recipe's epochs (optim.schedules=relative)"
        if not 0 <= warmup_epochs <= limit:
            raise ConfigError(f"optim.warmup_epochs must lie in [0, {name}] = [0, {limit:g}], got {warmup_epochs}")
        check_rates(lr, min_lr, decays)


@dataclass
class RunConfig:
    """Where a run writes, how long it trains, how often it logs, checkpoints and validates."""

    output_dir: Path = Path("runs/train")  # the run directory: config, checkpoints, logs, exported weights
    max_steps: int | None = None  # stop after this many optimiser steps; the schedules still span all epochs
    resume: str = "auto"  # "auto" (newest checkpoint in output_dir, if any), a checkpoint path, or "" (fresh)
    # A fresh start (resume "" or another run's checkpoint) into a run directory that holds an earlier run is
    # refused unless replace=true: the earlier run's files then move into output_dir/replaced-<time>/.
    replace: bool = False
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
    # Bit-exact reruns and resumes: deterministic kernels and one CPU thread (slower). Without it a rerun on a CPU
    # with several threads can differ by rounding (1e-6), since some kernels add in a thread-dependent order.
    deterministic: bool = False
    # Optimiser steps in a row whose loss or gradients are NaN or infinite that are skipped (weights unchanged, as
    # AMP's scaler does) before the run stops with one line; 0 stops at the first.
    max_nonfinite_steps: int = 10
    # Stop at start-up when the estimated memory per process (parameters, gradients, optimiser state, activations;
    # lafs.engine.memory) exceeds what the device has free; false starts anyway.
    memory_check: bool = True

    def validate(self) -> None:
        for key in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("seed", "num_workers", "threads", "eval_every", "max_nonfinite_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.seed >= 2**32:  # numpy's and torch's seeding take 32 bits
            raise ConfigError(f"seed must be < 2**32, got {self.seed}")
        cores = os.cpu_count() or 1
        for key in ("num_workers", "threads"):  # hundreds of processes or threads only thrash (or crash) a machine
            if getattr(self, key) > 4 * cores:
                raise ConfigError(f"{key} must be at most 4 x this machine's {cores} cores, got {getattr(self, key)}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0 or null, got {self.max_steps}")


def check_resumed_config(cfg: Any, run_dir: Path, fixed: tuple[str, ...]) -> None:
    """Compare the config of a run about to resume with the one its run directory records.

    A key under one of the ``fixed`` sections (what shapes the model or the data) that differs stops the run with
    one line naming the keys; any other difference, except run control (`RUN_CONTROL`), is logged as a warning.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = _flat(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
        raise ConfigError(f"{path}: unreadable; move it away to resume with the current config") from None
    new = _flat(config_to_dict(cfg))
    # A key the saved config lacks but that holds its default was added to the project since: not a change.
    defaults = _flat(config_to_dict(type(cfg)()))
    added = {key for key in new.keys() - saved.keys() if _same(defaults.get(key), new[key])}
    changed = sorted(key for key in saved.keys() | new.keys() - added if not _same(saved.get(key), new.get(key)))
    shaping = [key for key in changed if key.split(".")[0] in fixed and key not in RUN_CONTROL]
    if shaping:
        detail = ", ".join(f"{key} {saved.get(key)!r} -> {new.get(key)!r}" for key in shaping[:4])
        raise ConfigError(
            f"resuming {run_dir} with a different {'/'.join(sorted({k.split('.')[0] for k in shaping}))}: {detail}"
            f"{' ...' if len(shaping) > 4 else ''} (a new run needs another output_dir)"
        )
    others = [key for key in changed if key.split(".")[0] not in RUN_CONTROL and key not in RUN_CONTROL]
    if others:
        logger.warning(f"warning: resuming {run_dir} with changed {', '.join(others)} (saved config.yaml is replaced)")


def _same(saved: Any, new: Any) -> bool:
    """Equal values; two spellings of one existing path (``runs/x/``, ``./runs/x``, absolute) are equal too."""
    if saved == new:
        return True
    if isinstance(saved, str) and isinstance(new, str) and saved and new and Path(saved).exists():
        return Path(saved).resolve() == Path(new).resolve()
    return False


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= _flat(value, f"{name}.")
        else:
            flat[name] = value
    return flat
