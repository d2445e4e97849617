"""tools.benchmark partial-fc at tiny sizes on CPU: the figures, the memory accounting and its linear projection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tools.benchmark import main
from tools.benchmarks.partial_fc import HeadStep, projected_memory, short

CPU = torch.device("cpu")


def test_sub_command_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "partial_fc.json"
    arguments = ["--batch", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]
    sizes = ["--classes", "64", "2000", "--dim", "4", "--processes", "4", "--gpu-dim", "8", "--gpu-batch", "2"]
    assert main(["partial-fc", *arguments, *sizes, "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["command"] == "partial-fc" and result["processes"] == 4 and result["sample_rate"] == 0.1
    kinds = ("memory", "step", "gpu_projection")
    assert [fig["name"] for fig in result["figures"]] == [f"partial_fc_{k}_{n}" for n in ("64", "2k") for k in kinds]
    printed = capsys.readouterr().out
    for fig in result["figures"]:
        assert all(math.isfinite(fig[key]) and fig[key] > 0 for key in ("candidate", "reference", "ratio"))
        assert f"{fig['name']}: candidate" in printed
    held = result["sizes"]["2k"]["memory_bytes"]
    assert held["partial_fc"]["centres"] == 500 * 4 * 4 and held["replicated"]["centres"] == 2000 * 4 * 4
    assert result["sizes"]["2k"]["cuda_peak_bytes"] == {"partial_fc": None, "replicated": None}


def test_memory_counts_centres_gradient_moments_and_saved_tensors() -> None:
    held = HeadStep(16, 4, 2, CPU, processes=2, sample_rate=1.0).memory()
    assert (held["centres"], held["gradient"], held["optimiser"]) == (8 * 4 * 4, 8 * 4 * 4, 2 * 8 * 4 * 4)
    # At least the cosines and the logits of the 2 x 2 gathered rows against the 8 centres, in float32.
    assert held["saved_for_backward"] >= 2 * 4 * 8 * 4
    replicated = HeadStep(16, 4, 2, CPU).memory()
    assert (replicated["centres"], replicated["optimiser"]) == (16 * 4 * 4, 2 * 16 * 4 * 4)


def test_projection_is_exact_where_it_can_be_checked() -> None:
    classes, processes = 3 * 4096 * 2, 2  # between the two measured sizes (4096 and 8192 per process)
    projected = projected_memory(classes, 4, 2, CPU, processes, sample_rate=0.5)
    measured = {
        "partial_fc": sum(HeadStep(classes, 4, 2, CPU, processes, 0.5).memory().values()),
        "replicated": sum(HeadStep(classes, 4, 2, CPU).memory().values()),
    }
    assert projected == pytest.approx(measured, rel=1e-3)


def test_short_names() -> None:
    assert [short(n) for n in (100_000, 1_000_000, 2_000, 1234)] == ["100k", "1M", "2k", "1234"]
