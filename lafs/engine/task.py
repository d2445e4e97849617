"""What a training stage hands to `lafs.engine.fit`: a `Task`.

A task owns its models, losses and the meaning of a batch (timm's ``TrainingTask``, dinov2's ``SSLMetaArch``); the
engine owns everything a run has in common (devices, processes, data order, accumulation, precision, clipping,
schedules per optimiser step, logging, validation cadence, checkpoints, export). The engine calls, in order:

1. `build_dataset` (what the loader reads) and `build` (the trainable module, its optimiser, state to checkpoint);
2. `setup` once the trainable module is wrapped for the processes and the number of steps per epoch is known;
3. per micro-batch, inside gradient accumulation: `training_step` -> backward -> (on the last micro-batch of a
   cycle) clipping, `after_backward`, optimiser step; then `after_micro_batch`; after each optimiser step
   `after_step`; every ``log_every`` steps `log_values`; at the validation cadence `validate` (main process);
4. at the end `export` (main process) and `synced_weights` (every process, for ``dump_rank_weights``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from torch import nn

from lafs.data.collate import collate_faces
from lafs.data.open import SYNTHETIC, open_dataset, write_few_shot_list
from lafs.engine.checkpoints import TrainState
from lafs.engine.config import RunConfig
from lafs.errors import ConfigError
from lafs.landmarks.cache import META_FILE, LandmarkCache
from lafs.landmarks.extract import AUTO as AUTO_LANDMARKS
from lafs.landmarks.extract import cache_locations, complete_landmark_cache, dataset_landmark_cache

logger = logging.getLogger("lafs.engine")


@dataclass
class TrainingParts:
    """What `Task.build` returns: the module the optimiser trains, the optimiser, and what else lives on the device."""

    model: nn.Module  # wrapped for data parallelism by the engine; gradients are synchronised through it
    optimizer: torch.optim.Optimizer
    # Moved to the device but not wrapped or trained by the optimiser (an EMA teacher, a frozen reference).
    on_device: list[nn.Module] = field(default_factory=list)
    # Modules saved in every checkpoint besides the model and the optimiser (their state as safetensors): by the main
    # process, or by every process for a `lafs.engine.checkpoints.ProcessLocal` (state that differs between them).
    checkpointed: list[nn.Module] = field(default_factory=list)


@dataclass
class RunContext:
    """What a task may read about the run once `setup` is called."""

    accelerator: Accelerator
    state: TrainState  # optimiser steps done and the best validation score
    steps_per_epoch: int  # optimiser steps per epoch on this process's shard
    total_batch: int  # images per optimiser step over all processes and micro-batches
    total_steps: int  # optimiser steps the schedules span (all epochs; max_steps may stop the run earlier)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


class Task:
    """Base class of the stages' tasks; the hooks default to doing nothing."""

    name = "train"  # what the run's summary line calls it
    # Config sections that shape the model or the data: resuming with any of them changed is refused.
    fixed_on_resume: tuple[str, ...] = ("data", "synthetic")
    # DDP copies the main process's buffers to the others before each forward unless this is False (memory banks
    # that every process keeps identical on its own are too large to copy every step).
    broadcast_buffers = True

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.model: nn.Module | None = None  # the wrapped trainable module, set by the engine before `setup`
        self.faces: Any = None  # the run's face data set, as `open_faces` opened it

    # ---------------------------------------------------------------------------------------------- building --

    def build_dataset(self, accelerator: Accelerator) -> Any:
        """The training set the loader shards and shuffles (items are dicts)."""
        raise NotImplementedError

    def landmark_set_sources(self) -> dict[str, str]:
        """What fixes the run's landmark set, ``{what: set}``: a landmark cache given as ``data.landmarks`` (the set
        it recorded) and, when resuming, the run's saved config; fine-tuning adds its ``init`` encoder's."""
        sources = {}
        folder = Path(self.cfg.data.landmarks)
        if (folder / META_FILE).is_file():
            sources[f"data.landmarks={folder}"] = LandmarkCache.open(folder).info.landmark_set
        saved = self.cfg.output_dir / "config.yaml"
        if self.cfg.resume and (self.cfg.output_dir / "checkpoints").is_dir() and saved.is_file():
            # A resumed run keeps the set it started with, whatever fixed it then (an init= given only then).
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
                sources[f"the resumed run ({saved})"] = str(yaml.safe_load(saved.read_text())["data"]["landmark_set"])
        return sources

    def follow_landmark_set(self) -> None:
        """``data.landmark_set`` (and ``encoder.landmark_set``) follow what fixes the set (`landmark_set_sources`),
        with a line saying so; sources that disagree are one `ConfigError` naming them and the keys."""
        sources = self.landmark_set_sources()
        wanted = set(sources.values())
        if len(wanted) > 1:
            named = ", ".join(f"{what} has {name}" for what, name in sources.items())
            raise ConfigError(
                f"landmark sets disagree: {named}; give data.landmarks a cache of the same set "
                "(python -m tools.landmarks --landmark-set SET), data.landmarks=mediapipe, or for a grid set "
                "(grid196) data.landmarks=template"
            )
        data, encoder = self.cfg.data, getattr(self.cfg, "encoder", None)
        if not wanted or wanted == {data.landmark_set}:
            return
        target = wanted.pop()
        logger.info(
            f"landmark set {target}, as {next(iter(sources))} fixes it (the config said {data.landmark_set}): "
            f"data.landmark_set={target}" + (" encoder.landmark_set=" + target if encoder is not None else "")
        )
        data.landmark_set = target  # synthetic faces take data.landmark_set themselves (open_dataset)
        if encoder is not None:
            encoder.landmark_set = target
        self.cfg.validate()  # what depends on the set (patch views need a grid, ...) is checked again

    def open_faces(self, accelerator: Accelerator | None = None) -> Any:
        """The run's face data set as ``data`` and ``synthetic`` say (`lafs.data.open.open_dataset`).

        The landmark set follows what fixes it first (`follow_landmark_set`). ``data.landmarks=mediapipe`` is
        resolved next: the dataset's MediaPipe cache is found or computed (by the main process of ``accelerator``;
        the others wait) and ``data.landmarks`` becomes its folder, so the saved config, a resumed run and every
        consumer see the cache itself.
        """
        self.follow_landmark_set()
        data = self.cfg.data
        if data.landmarks == AUTO_LANDMARKS:
            if data.path == SYNTHETIC:
                raise ConfigError("data.landmarks=mediapipe: synthetic faces carry exact landmarks; use template")
            where = (data.path, data.landmark_set, data.image_size, self.cfg.output_dir)
            if accelerator is not None and accelerator.num_processes > 1:
                # Hours of MediaPipe on one rank would outlast the others' collective timeout: compute it first.
                found = complete_landmark_cache(*where)
                if found is None:
                    raise ConfigError(
                        f"data.landmarks=mediapipe with {accelerator.num_processes} processes needs the cache made "
                        f"first: python -m tools.landmarks --input {data.path} --landmark-set {data.landmark_set} "
                        f"--output {cache_locations(*where)[0]} (or one single-process run)"
                    )
            else:
                found = dataset_landmark_cache(*where, data.bgr, log=logger.info)
            data.landmarks = str(found)
        options = dataclasses.asdict(self.cfg.data)
        self.faces = open_dataset(options.pop("path"), synthetic=self.cfg.synthetic, **options)
        return self.faces

    def collate_fn(self) -> Callable[[Sequence[Any]], dict[str, Any]]:
        """The function that makes one batch from dataset items (default: stacked face items).

        A module-level function, not a method: loader workers started by spawn or forkserver (macOS, Windows, newer
        Pythons) pickle it, and a task holds what cannot be pickled (the accelerator).
        """
        return collate_faces

    def build(self, accelerator: Accelerator, dataset: Any) -> TrainingParts:
        """Models, optimiser and extra checkpointed state (before they are placed and wrapped)."""
        raise NotImplementedError

    def activation_bytes(self, parts: TrainingParts, batch_size: int) -> int | None:
        """Bytes of the activations one micro-batch of ``batch_size`` keeps for backward (`lafs.engine.memory`), for
        the start-up memory check; None: not estimated."""
        return None

    memory_advice = ""  # what to do when the memory check fails (a smaller config to use instead)

    def setup(self, run: RunContext) -> None:
        """Called once after placement and resume: schedules that need the steps per epoch, eval sets, ...

        Subclasses call ``super().setup(run)``, which keeps ``run`` as ``self.run``.
        """
        self.run = run

    def write_run_files(self, run_dir: Path) -> None:
        """Files that describe the run beside config.yaml, written once start-up checks have passed: the few-shot
        list (few_shot.csv) of `open_faces`' data set."""
        write_few_shot_list(self.faces, run_dir)

    def resolved_config(self) -> RunConfig:
        """The config to save in the run directory: what was actually used (e.g. a loaded model's architecture)."""
        return self.cfg

    # ---------------------------------------------------------------------------------------------- training --

    def learning_rate(self, step: int) -> float:
        """Base learning rate of optimiser step ``step`` (each group is scaled by its ``lr_scale``, if any)."""
        raise NotImplementedError

    def weight_decay(self, step: int) -> float | None:
        """Weight decay of step ``step`` for groups marked ``scheduled_decay``; None leaves every group as built."""
        return None

    def epoch(self, step: int) -> float:
        """Fractional epoch at optimiser step ``step`` (what schedules in epochs read)."""
        return step / self.run.steps_per_epoch

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """Forward one micro-batch (already on the device); named loss terms with ``loss``, the one to minimise."""
        raise NotImplementedError

    def after_backward(self, step: int) -> None:
        """After the last micro-batch's backward and clipping, before the optimiser step (edit gradients here)."""

    def after_micro_batch(self, step: int) -> None:
        """After every micro-batch's optimiser call (state updates from the micro-batch, e.g. memory banks)."""

    def after_step(self, step: int, skipped: bool) -> None:
        """After optimiser step ``step``; ``skipped``: fp16 overflow, the weights did not move."""

    def log_values(self, step: int, terms: Mapping[str, float]) -> dict[str, float]:
        """Values to log beside the loss terms and the learning rate for optimiser step ``step`` (0-based)."""
        return {}

    # ------------------------------------------------------------------------------------------- validation --

    @property
    def validates(self) -> bool:
        """Whether the run validates (every process must agree: the others wait at a barrier)."""
        return False

    def validate(self, step: int) -> dict[str, float]:
        """Validation figures after ``step`` optimiser steps; runs on the main process only."""
        return {}

    # ------------------------------------------------------------------------------------------------ export --

    def export(self, run_dir: Path, step: int) -> dict[str, Path]:
        """Write the trained weights (main process); returns what went where, for the summary."""
        return {}

    def synced_weights(self) -> nn.Module:
        """The weights every process must hold identically after training (``dump_rank_weights``)."""
        if self.model is None:
            raise RuntimeError("synced_weights before the engine set the model")
        return self.model
