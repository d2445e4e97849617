"""The data side of the loop: the loader, whole accumulation cycles per epoch, a batch order that resumes exactly."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from lafs.errors import ConfigError

logger = logging.getLogger("lafs.engine")


def make_loader(
    dataset: Any,
    batch_size: int,
    collate: Callable[[Any], dict[str, Any]],
    num_workers: int,
    seed: int,
    device: torch.device,
) -> DataLoader:
    """Shuffled, seeded batches without a short last one; workers stay alive across epochs."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,  # every micro-batch the same size: the losses and accumulation are scaled for it
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # restarting them each epoch costs seconds of imports per worker
        pin_memory=device.type == "cuda",  # pinned host memory lets the copy to the GPU overlap with compute
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )


def steps_per_epoch(images: int, batches: int, batch_size: int, grad_accum: int, processes: int) -> int:
    """Optimiser steps per epoch from ``batches``, this process's shard of the loader (after `prepare`).

    Raises `ConfigError` when a process gets fewer batches than one accumulation cycle: such a run would train
    zero steps and write an untrained model.
    """
    steps = batches // grad_accum
    if steps < 1:
        raise ConfigError(
            f"{images} images give each of {processes} processes {batches} batches of {batch_size}, fewer than "
            f"optim.grad_accum={grad_accum}: use a smaller optim.batch_size or optim.grad_accum, or more data"
        )
    return steps


def left_out_per_epoch(images: int, steps: int, batch_size: int, grad_accum: int, processes: int) -> int:
    """Images an epoch does not train on: the short last batch (drop_last) and a partial accumulation cycle."""
    return max(images - steps * grad_accum * batch_size * processes, 0)


def training_batches(
    accelerator: Accelerator,
    loader: Any,
    start_step: int,
    steps_per_epoch: int,
    grad_accum: int,
    on_epoch: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Micro-batches from optimiser step ``start_step`` on, endlessly; the caller stops.

    Each epoch feeds whole accumulation cycles only: a last, partial cycle is left out (accelerate would force a
    step on it that the loss was not scaled for). Resuming mid-epoch replays that epoch's seeded order minus the
    batches already trained on. ``on_epoch(epoch)`` runs before each epoch's first batch (dataset epochs).
    """
    step = start_step
    while True:
        epoch = step // steps_per_epoch
        if on_epoch is not None:
            on_epoch(epoch)
        loader.set_epoch(epoch)
        skip = (step - epoch * steps_per_epoch) * grad_accum
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        yield from itertools.islice(batches, steps_per_epoch * grad_accum - skip)
        step = (epoch + 1) * steps_per_epoch
