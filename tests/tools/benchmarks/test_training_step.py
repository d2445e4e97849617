"""tools.benchmark training-step and GPU sub-commands at tiny sizes on CPU (no timing assertions), and their maths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tools.benchmark import main
from tools.benchmarks.gpu import count_flops
from tools.benchmarks.training_step import build_finetune_step, build_pretrain_step, grid_shape, plain_vit_like

NANO = "lafs_vit_nano_p8_112"
TINY = ["--encoder", NANO, "--batch", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]
SMALL_PRETRAIN = ["--num-local", "2", "--local-landmarks", "9", "--out-dim", "64"]
COMMANDS = {
    "pretrain-step": (SMALL_PRETRAIN, {"pretrain_step_vs_plain_vit"}),
    "finetune-step": (["--classes", "8"], {"finetune_step_vs_plain_vit"}),
    "gpu": ([*SMALL_PRETRAIN, "--classes", "8", "--matmul-size", "64"], {"finetune_mfu", "pretrain_mfu"}),
}
CPU = torch.device("cpu")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_sub_command_writes_json(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra, names = COMMANDS[command]
    output = tmp_path / f"{command}.json"
    assert main([command, *TINY, *extra, "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["command"] == command and result["encoder"] == NANO
    assert result["batch"] == 2 and result["device"] == "cpu" and result["threads"] == 1
    assert {fig["name"] for fig in result["figures"]} == names
    printed = capsys.readouterr().out
    for fig in result["figures"]:
        for key in ("candidate", "reference", "ratio"):
            assert math.isfinite(fig[key]) and fig[key] > 0
        assert fig["ratio"] == pytest.approx(fig["candidate"] / fig["reference"])
        assert f"{fig['name']}: candidate" in printed
    if command == "gpu":
        for step in ("finetune", "pretrain"):
            assert result[step]["flops_per_step"] > 0 and result[step]["images_per_second"] > 0
            assert result[step]["peak_memory_gib"] is None  # CPU


def test_gpu_defaults_to_the_base_encoder() -> None:
    from tools.benchmark import build_parser

    assert build_parser().parse_args(["gpu"]).encoder == "lafs_vit_base_p8_112"
    assert build_parser().parse_args(["pretrain-step"]).encoder == NANO


@pytest.mark.parametrize(("tokens", "grid"), [(196, (14, 14)), (49, (7, 7)), (36, (6, 6)), (68, (4, 17)), (7, (1, 7))])
def test_grid_shape_is_as_square_as_possible(tokens: int, grid: tuple[int, int]) -> None:
    assert grid_shape(tokens) == grid


def test_plain_reference_matches_the_landmark_vit() -> None:
    from lafs.models import EncoderConfig, build_encoder

    lafs = build_encoder(EncoderConfig(name=NANO, landmark_set="mediapipe49"))
    plain = plain_vit_like(lafs)
    assert plain.patch_embed.grid_size == (7, 7) and plain.patch_embed.num_patches == lafs.num_landmarks == 49
    assert (plain.embed_dim, len(plain.blocks)) == (lafs.embed_dim, len(lafs.blocks))
    # Tokenizer Linear(3 * 8 * 8, d) and Conv2d(3, d, 8, 8) hold the same weights; so does everything else.
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in lafs.parameters())
    images = torch.zeros(1, 3, 56, 56)
    assert plain.forward_features(images).shape == (1, 1 + 49, lafs.embed_dim)
    local = torch.zeros(1, 3, 48, 48)  # k = 36 -> a 6 x 6 grid, the position table resampled
    assert plain.forward_features(local).shape == (1, 1 + 36, lafs.embed_dim)


def test_pretrain_steps_have_equal_shapes_and_flops() -> None:
    """The LAFS and plain steps do the same matmuls: FLOPs agree to the tokenizer (Linear vs Conv2d, both counted)."""
    options = {"num_local": 2, "local_landmarks": 36, "out_dim": 64}
    lafs = build_pretrain_step(NANO, 2, CPU, plain=False, **options)
    plain = build_pretrain_step(NANO, 2, CPU, plain=True, **options)
    assert plain.info["images"] == (112, 112) and plain.info["local_images"] == (48, 48)
    for key in ("width", "depth", "global_tokens", "local_tokens", "parameters"):
        assert lafs.info[key] == plain.info[key]
    flops, plain_flops = count_flops(lafs, CPU), count_flops(plain, CPU)
    assert flops > 0 and flops == pytest.approx(plain_flops, rel=1e-6)
    # Forward of the student's 12 blocks' worth of matmuls alone: 2 * params * tokens is a lower bound of fwd + bwd.
    blocks = sum(p.numel() for p in lafs.modules[0].backbone.blocks.parameters() if p.ndim == 2)
    tokens = 2 * 2 * (1 + 196) + 2 * 2 * (1 + 36)
    assert flops > 3 * 2 * blocks * tokens


def test_finetune_step_trains_and_counts_flops() -> None:
    step = build_finetune_step(NANO, 2, CPU, plain=True, classes=8)
    model = step.modules[0]
    before = model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    assert count_flops(step, CPU) > 0  # runs one step
    assert not torch.equal(before, model.encoder.blocks[0].attn.qkv.weight)
