"""tools.fewshot end to end at test size: synthetic identities, every arm, a regulariser, resume, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.fewshot import main

# Test-size stages: tiny DINO heads, few views, no loader processes; two steps each.
PRETRAIN_SET = ["views.num_local=2", "dino.out_dim=64", "dino.hidden_dim=32", "dino.bottleneck_dim=16",
                "num_workers=0", "optim.batch_size=8"]  # fmt: skip
FINETUNE_SET = ["num_workers=0", "optim.batch_size=8"]
ARGS = ["--input", "synthetic", "--synthetic-identities", "6", "--synthetic-images", "5", "--unseen", "2",
        "--seeds", "0", "--pretrain-steps", "2", "--finetune-steps", "2", "--pairs", "20", "--shots", "2",
        "--pretrain-set", *PRETRAIN_SET, "--finetune-set", *FINETUNE_SET]  # fmt: skip


def test_every_arm_end_to_end_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fewshot"
    assert main([*ARGS, "--output", str(out), "--regularisers", "none,unpg"]) == 0
    document = json.loads((out / "results.json").read_text())
    records = document["records"]
    # Per arm: the encoder before fine-tuning (shots 0) and one fine-tuned run per regulariser.
    assert sorted((r["arm"], r["shots"], r["regulariser"]) for r in records) == sorted(
        (arm, shots, regulariser)
        for arm in ("lafs", "dino", "none")
        for shots, regulariser in ((0, "-"), (2, "none"), (2, "unpg"))
    )
    assert all(0 <= r["accuracy"] <= 1 and r["num_pairs"] == 20 and r["seed"] == 0 for r in records)
    assert (out / "results.png").stat().st_size > 0 and "| lafs | 2 | unpg | 1 |" in (out / "results.md").read_text()
    split = json.loads((out / "seed0" / "split.json").read_text())
    assert len(split["unseen"]) == 2 and not set(split["unseen"]) & set(split["seen"])
    dino = json.loads((out / "seed0" / "pretrain_dino" / "encoder" / "config.json").read_text())
    assert dino["landmark_set"] == "grid196"
    stamp = (out / "seed0" / "finetune_lafs_2shot_unpg" / "unseen_eval.json").stat().st_mtime_ns

    capsys.readouterr()
    assert main([*ARGS, "--output", str(out), "--regularisers", "none,unpg"]) == 0  # everything done: reused
    assert (out / "seed0" / "finetune_lafs_2shot_unpg" / "unseen_eval.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["records"] == records


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--arms", "lafs,mae"], "--arms: unknown 'mae'"),
        (["--regularisers", "arcface"], "--regularisers: unknown 'arcface'"),
        (["--unseen", "5"], "--unseen must lie in [2, 4] for 6 identities"),
    ],
)
def test_bad_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    assert main([*ARGS, "--output", str(tmp_path / "out"), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    assert main([*ARGS, "--output", str(tmp_path)]) == 2
    assert "not a lafs-fewshot output" in capsys.readouterr().err and (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_fixed_split_holds_the_same_people_and_pairs_aside_for_every_seed(tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"held_aside_identities": ["id0001", "id0004"]}))
    out = tmp_path / "fewshot"
    fixed = [*ARGS, "--output", str(out), "--split", str(split), "--arms", "none", "--seeds", "0", "1"]
    assert main(fixed) == 0
    for seed in ("seed0", "seed1"):
        assert json.loads((out / seed / "split.json").read_text())["unseen"] == ["id0001", "id0004"]
    assert (out / "seed0" / "unseen_pairs.bin").read_bytes() == (out / "seed1" / "unseen_pairs.bin").read_bytes()
    split.write_text("{}")
    assert main([*ARGS, "--output", str(tmp_path / "other"), "--split", str(split)]) == 2  # not a split.json


def test_the_landmark_set_follows_the_pretraining_config(tmp_path: Path) -> None:
    out = tmp_path / "fewshot"
    # configs/cpu/pretrain.yaml's 49 points (here set by key): every stage and the landmark cache use that set.
    args = [*ARGS, "--output", str(out), "--arms", "lafs", "--pretrain-set", *PRETRAIN_SET,
            "data.landmark_set=mediapipe49", "encoder.landmark_set=mediapipe49"]  # fmt: skip
    assert main(args) == 0
    for stage in ("pretrain_lafs", "finetune_lafs_2shot_none"):
        encoder = json.loads((out / "seed0" / stage / "encoder" / "config.json").read_text())
        assert encoder["landmark_set"] == "mediapipe49"
    assert (out / "synthetic" / "exact_landmarks-mediapipe49.npy").is_file()
    assert "landmarks: mediapipe49" in (out / "results.md").read_text()


def test_a_grid_is_no_landmark_set_for_the_lafs_arm(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*ARGS, "--output", str(tmp_path / "out"), "--landmark-set", "grid196"]) == 2
    assert "grid196 is a patch grid" in capsys.readouterr().err
