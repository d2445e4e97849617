"""The start-up memory estimate: hand-counted activations, optimiser state, and a GPU-sized config stopped on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import lafs.engine.loop
from lafs.engine.memory import (
    GiB,
    MemoryEstimate,
    block_activation_elements,
    check_memory,
    optimizer_state_bytes,
    vit_activation_elements,
)
from lafs.errors import ConfigError
from lafs.pretrain import main as pretrain
from tests.lafs.test_pretrain import TINY


def test_one_block_by_hand() -> None:
    # 10 tokens of width 8, 2 heads, MLP ratio 4: 10 * 8 * (8 + 2 * 4) = 1280 kept values, plus 2 * 10^2 = 200 scores.
    assert block_activation_elements(10, 8, 2, 4.0) == 1480


def test_a_vit_counts_every_block_over_every_view() -> None:
    vit = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=0)  # width 192, 3 heads, ratio 4
    per_view = [block_activation_elements(t, 192, 3, 4.0) for t in (197, 17)]
    assert vit_activation_elements(vit, [197, 17]) == 2 * sum(per_view)


def test_optimiser_state_by_kind() -> None:
    layer = nn.Linear(3, 2)  # 8 float32 values: 32 bytes of gradients
    assert optimizer_state_bytes(torch.optim.AdamW(layer.parameters())) == (32, 64)  # two moments
    assert optimizer_state_bytes(torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)) == (32, 32)
    assert optimizer_state_bytes(torch.optim.SGD(layer.parameters(), lr=0.1)) == (32, 0)


def test_check_names_the_estimate_and_the_advice() -> None:
    estimate = MemoryEstimate({"parameters": GiB, "activations": 2 * GiB})
    check_memory(estimate, 1, free=3 * GiB)  # fits exactly
    with pytest.raises(ConfigError) as error:
        check_memory(estimate, 2, free=5 * GiB, advice="Use a smaller batch.")
    assert str(error.value) == (
        "this config needs about 3.0 GiB (parameters 1.0, activations 2.0) for each of 2 processes; 5.0 GiB is "
        "available. Use a smaller batch. (memory_check=false starts anyway)"
    )


def test_a_gpu_sized_pretraining_stops_at_once_on_a_small_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The defaults (ViT-B, 82 images of 10 views, 65,536 prototypes) need about 38 GiB; pretend 16 GiB are free.
    monkeypatch.setattr(lafs.engine.loop, "device_free_memory", lambda device: 16 * GiB)
    out = tmp_path / "run"
    assert pretrain([f"output_dir={out}", "synthetic.num_identities=4", "optim.schedules=relative"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: this config needs about 3") and error.count("\n") == 1
    assert "16.0 GiB is available" in error and "configs/cpu/pretrain.yaml" in error
    assert not out.exists()  # nothing written before every start-up check has passed


def test_memory_check_false_starts_anyway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lafs.engine.loop, "device_free_memory", lambda device: 1)
    assert pretrain([*TINY, f"output_dir={tmp_path / 'no'}", "max_steps=1"]) == 2
    assert pretrain([*TINY, f"output_dir={tmp_path / 'yes'}", "max_steps=1", "memory_check=false"]) == 0
