"""tools.benchmark at tiny sizes: each sub-command runs, prints its figures and writes valid JSON (no timings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tools.benchmark import main

TINY = ["--encoder", "lafs_vit_nano_p8_112", "--batch", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu"]
FIGURES = {
    "tokenizer": {"tokenizer_vs_patch_embed", "tokenizer_share_of_step"},
    "evaluation": {"evaluation_no_flip", "evaluation_flip"},
    "predictor": {"predictor_vs_encoder"},
    "data": {"worker_vs_decode", "worker_views_vs_decode", "worker_views_growth", "device_views_vs_decode"},
}
FIGURE_KEYS = {"name", "candidate", "reference", "unit", "ratio", "target", "target_op", "met"}


@pytest.mark.parametrize("command", sorted(FIGURES))
def test_sub_command_writes_json(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--batches", "1"] if command == "evaluation" else []
    if command == "predictor":
        extra = ["--backbone", "mobilenetv3_small_050"]  # a smaller timm CNN keeps the test quick
    if command == "data":
        extra = ["--images", "4", "--num-local", "3"]
    output = tmp_path / "out" / f"{command}.json"
    assert main([command, *TINY, *extra, "--threads", "1", "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["command"] == command
    assert result["encoder"] == "lafs_vit_nano_p8_112"
    assert result["batch"] == 2 and result["device"] == "cpu" and result["threads"] == 1
    assert {fig["name"] for fig in result["figures"]} == FIGURES[command]
    printed = capsys.readouterr().out
    for fig in result["figures"]:
        assert set(fig) == FIGURE_KEYS
        for key in ("candidate", "reference", "ratio"):
            assert math.isfinite(fig[key]) and fig[key] > 0
        assert fig["ratio"] == pytest.approx(fig["candidate"] / fig["reference"])
        assert (fig["met"] is None) == (fig["target"] is None)
        assert f"{fig['name']}: candidate" in printed


def test_cuda_without_gpu_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["tokenizer", *TINY[:-2], "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_recipe_step_against_the_plain_timm_step(tmp_path: Path) -> None:
    output = tmp_path / "recipe.json"
    argv = ["recipe-step", "--encoder", "timm:resnet10t", "--batch", "4", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--device", "cpu", "--classes", "5", "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["recipe"]["image_size"] == 64 and result["recipe"]["encoder"] == "timm:resnet10t"
    (fig,) = result["figures"]
    assert fig["name"] == "recipe_step_vs_plain_timm" and fig["target"] == 0.9 and fig["ratio"] > 0
