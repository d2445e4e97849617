"""EpochSeeded: items drawn per (seed, epoch, index), and the epoch reaches workers kept alive across epochs."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader, default_collate

from lafs.data.epoch import EpochSeeded
from lafs.errors import ConfigError


class Draws(EpochSeeded):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, float]:
        return {"draw": float(self.rng(i).random())}


def expected(seed: int, epoch: int) -> list[float]:
    return [float(np.random.default_rng(np.random.SeedSequence([seed, epoch, i])).random()) for i in range(4)]


def test_persistent_workers_see_every_epoch():
    dataset = Draws(seed=5)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True, collate_fn=default_collate)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        (batch,) = list(loader)
        assert batch["draw"].tolist() == expected(5, epoch)
    assert expected(5, 0) != expected(5, 1)


def test_bad_seed_and_epoch():
    with pytest.raises(ConfigError, match="seed must be non-negative"):
        Draws(seed=-1)
    with pytest.raises(ValueError, match="epoch must be non-negative"):
        Draws(seed=0).set_epoch(-1)
