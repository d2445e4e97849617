"""Loop pieces every training entry point shares: resumable batch order and the progress bar."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm import tqdm


def training_batches(
    accelerator: Accelerator,
    loader: Any,
    start_step: int,
    steps_per_epoch: int,
    grad_accum: int,
    on_epoch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(epoch, micro-batch) pairs from optimiser step ``start_step`` on, endlessly; the caller stops.

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
        for batch in itertools.islice(batches, steps_per_epoch * grad_accum - skip):
            yield epoch, batch
        step = (epoch + 1) * steps_per_epoch


def progress_bar(accelerator: Accelerator, total: int, initial: int) -> tqdm:
    """A live bar of optimiser steps on the main process's terminal; nothing in logs and on other processes."""
    return tqdm(
        total=total,
        initial=initial,
        disable=None if accelerator.is_main_process else True,
        unit="step",
        dynamic_ncols=True,
    )


def write_weights_hash(module: torch.nn.Module, run_dir: Path, rank: int) -> Path:
    """Write the SHA-256 of ``module``'s state to ``run_dir/weights_rank<rank>.sha256`` (processes must agree)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = run_dir / f"weights_rank{rank}.sha256"
    path.write_text(digest.hexdigest() + "\n")
    return path
