"""Batch order that resumes exactly, whole accumulation cycles, and the too-few-batches check."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
from accelerate.utils import set_seed
from torch.utils.data import default_collate

from lafs.engine.accelerator import build_accelerator
from lafs.engine.batches import left_out_per_epoch, make_loader, steps_per_epoch, training_batches
from lafs.errors import ConfigError
from tests.conftest import ROOT


class Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"index": i}


def order(start_step: int, count: int, grad_accum: int = 1) -> list[list[int]]:
    """``count`` micro-batches (as index lists) from optimiser step ``start_step`` of a fresh, prepared loader."""
    accelerator = build_accelerator()
    set_seed(0)  # as fit does: the seedable sampler draws from it
    loader = accelerator.prepare(make_loader(Numbers(), 3, default_collate, 0, seed=7, device=torch.device("cpu")))
    steps = steps_per_epoch(10, len(loader), 3, grad_accum, 1)
    batches = training_batches(accelerator, loader, start_step, steps, grad_accum)
    return [b["index"].tolist() for b in itertools.islice(batches, count)]


def test_epochs_are_shuffled_whole_batches_and_resume_mid_epoch_replays_the_rest():
    whole = order(0, 9)  # 10 items, batch 3: 3 batches per epoch, the 10th item left out each epoch
    assert all(len(b) == 3 for b in whole)
    epochs = [list(itertools.chain(*whole[i : i + 3])) for i in (0, 3, 6)]
    assert all(len(set(e)) == 9 for e in epochs) and epochs[0] != epochs[1]
    assert order(4, 5) == whole[4:]  # step 4 is the second batch of epoch 1


def test_accumulation_feeds_whole_cycles_and_resumes_on_cycle_boundaries():
    # 3 batches per epoch, 2 per optimiser step: 1 step per epoch, the third batch left out.
    whole = order(0, 6, grad_accum=2)
    assert order(1, 4, grad_accum=2) == whole[2:]
    assert order(0, 9)[:2] == whole[:2] and order(0, 9)[3:5] == whole[2:4]


def test_steps_and_left_out_images():
    assert steps_per_epoch(images=100, batches=12, batch_size=8, grad_accum=5, processes=1) == 2
    assert left_out_per_epoch(images=100, steps=2, batch_size=8, grad_accum=5, processes=1) == 20
    assert left_out_per_epoch(images=64, steps=2, batch_size=8, grad_accum=2, processes=2) == 0
    with pytest.raises(ConfigError, match="8 images give each of 2 processes 1 batches of 4, fewer than optim"):
        steps_per_epoch(images=8, batches=1, batch_size=4, grad_accum=2, processes=2)


def test_two_processes_with_fewer_batches_than_one_cycle_stop_with_one_line(tmp_path):
    # 8 images, batch 4, grad_accum 2 on 2 processes: each process gets 1 batch. This once trained 0 steps, wrote an
    # untrained encoder and exited 0 (the check ran before the loader was sharded).
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "configs/accelerate/cpu_2proc.yaml"), str(ROOT / "lafs/pretrain.py"),
        "--config", str(ROOT / "configs/pretrain/demo.yaml"), f"output_dir={tmp_path}",
        "synthetic.num_identities=4", "synthetic.images_per_identity=2", "optim.batch_size=4", "optim.grad_accum=2",
        "num_workers=0",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: 8 images give each of 2 processes 1 batches of 4, fewer than optim.grad_accum=2: use a "
        "smaller optim.batch_size or optim.grad_accum, or more data"
    ]
    # The process that fails first exits 2 (the launcher may stop the other one first; it then exits 1 itself).
    assert "exitcode  : 2" in result.stderr
    assert result.returncode != 0 and not (tmp_path / "encoder").exists()
