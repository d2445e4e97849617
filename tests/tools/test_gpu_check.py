"""tools.gpu_check at test size on the CPU: every part runs and lands in the one JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.gpu_check import main


def test_every_part_runs_at_test_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "check.json"
    assert main(["--tiny", "--device", "cpu", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    encoders = [(record["encoder"], [f["name"] for f in record["figures"]]) for record in report["benchmarks"]]
    assert encoders == [("lafs_vit_nano_p8_112", ["finetune_mfu", "pretrain_mfu"]), ("iresnet18", ["finetune_mfu"])]
    assert all(record["finetune"]["flops_per_step"] > 0 for record in report["benchmarks"])
    assert {name: run["steps"] for name, run in report["training"].items()} == {"pretrain": 2, "finetune": 2}
    equal = report["views_equality"]
    assert equal["passed"] and equal["pixels_grey_levels"] == 0.0  # CPU against itself: the same floats
    assert "wrote" in capsys.readouterr().out
