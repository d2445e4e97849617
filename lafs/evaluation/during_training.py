"""Verification during training: pair sets (``.bin``) loaded once, scored every ``eval_every`` steps.

Fine-tuning verifies its encoder and pretraining its teacher with the same k-fold protocol as `tools.evaluate`
(flip test-time augmentation, 10 folds, or one pair per fold on a home-made set of fewer pairs), each with the
landmarks the run trains with (`lafs.evaluation.landmarks`: MediaPipe's, computed once and cached beside the set).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lafs.data.pairs import load_bin, read_bin
from lafs.errors import ConfigError, DataError
from lafs.evaluation.landmarks import EvalLandmarks, bin_landmarks
from lafs.evaluation.verification import evaluate_pairs
from lafs.files import write_atomic
from lafs.landmarks.provenance import LandmarkChoice

if TYPE_CHECKING:
    from lafs.engine.checkpoints import TrainState

logger = logging.getLogger("lafs.evaluation")

MEAN = "mean_accuracy"  # the score a run keeps its best checkpoint by


def check_eval_bins(paths: Sequence[str | os.PathLike[str]]) -> None:
    """`ConfigError` (one line) for an ``eval_bins`` file that does not exist or is not a pair set, or two that share
    a name (stem). Read before anything is written (the images are decoded later, when the run opens them)."""
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise ConfigError(f"eval_bins: no such file {missing[0]}")
    stems = [Path(path).stem for path in paths]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:
        raise ConfigError(f"eval_bins: two sets share the name {twice[0]!r} (names are file stems)")
    for path in paths:
        try:
            read_bin(path)
        except DataError as error:
            raise ConfigError(f"eval_bins: {error}") from None


class ValidationSets:
    """Pair sets by name (the file stem), with their images (2P, S, S, 3) uint8, labels (P,) and landmarks."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        choice: LandmarkChoice,
        workers: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.choice = choice
        self.sets: dict[str, tuple[Any, Any]] = {}
        self.landmarks: dict[str, EvalLandmarks] = {}
        for path in paths:
            name = Path(path).stem
            images, issame = load_bin(path, choice.image_size)
            self.sets[name] = (images, issame)
            # MediaPipe's, once, here: cached beside the set (else in cache_dir) for later runs.
            self.landmarks[name] = bin_landmarks(choice, path, len(images), max(1, workers), cache_dir)
            logger.info(f"validation {self.landmarks[name].describe(name)}")

    def verify(self, encoder: torch.nn.Module, device: torch.device, batch_size: int = 256) -> dict[str, float]:
        """``{"<set>_accuracy": k-fold accuracy, ..., "mean_accuracy": their mean}`` of ``encoder`` (on ``device``)."""
        permutation = self.choice.flip_permutation() if self.choice.takes_landmarks else None
        record = {}
        for name, (images, issame) in self.sets.items():
            folds = min(10, len(issame))  # the standard 10 folds; small home-made sets get one pair per fold
            report = evaluate_pairs(
                encoder,
                images,
                issame,
                batch_size=batch_size,
                device=device,
                folds=folds,
                landmarks=self.landmarks[name].points,
                flip_permutation=permutation,
            )
            record[f"{name}_accuracy"] = report["accuracy"]
        record[MEAN] = float(np.mean(list(record.values())))
        return record


def keep_best(
    record: dict[str, float], state: TrainState, folder: Path, step: int, save: Callable[[Path], object]
) -> dict[str, float]:
    """After a validation: a new best ``mean_accuracy`` goes into ``state.best_score`` (checkpointed), ``save(folder)``
    writes the model there and ``folder/best.json`` the step and scores. Returns ``record`` plus the best so far."""
    if record[MEAN] > state.best_score:
        state.best_score = record[MEAN]
        save(folder)
        write_atomic(folder / "best.json", json.dumps({"step": step, **record}, indent=2) + "\n")
    return record | {"best_mean_accuracy": state.best_score}
