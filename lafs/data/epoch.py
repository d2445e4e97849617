"""Datasets whose items depend on the epoch, with loader workers that stay alive across epochs."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from lafs.errors import ConfigError


class EpochSeeded(Dataset):
    """Base of datasets that draw item i of epoch e from ``SeedSequence([seed, e, i])``.

    Items are then a pure function of (seed, epoch, index): the same in any loader worker, in any order and after a
    resumed run, with no random state to checkpoint. The epoch lives in shared memory: persistent loader workers keep
    the copy of the dataset they started with, and only a shared tensor reaches them when `set_epoch` changes it.
    """

    def __init__(self, seed: int) -> None:
        if seed < 0:
            raise ConfigError(f"seed must be non-negative, got {seed}")
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Call before the epoch's loader iterator is made (workers start fetching as soon as it exists)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self._epoch.fill_(epoch)

    def rng(self, i: int) -> np.random.Generator:
        """The generator of item ``i`` in the current epoch."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))
