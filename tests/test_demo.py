import numpy as np
import yaml

from tests.test_finetune import TINY as FINETUNE_TINY
from tests.test_pretrain import TINY
from tools.demo import main

# The training stages at test size: the TINY overrides minus the config file they start from (and its init).
PRETRAIN = [arg for arg in TINY[2:] if "=" in arg] + ["max_steps=2"]
FINETUNE = [arg for arg in FINETUNE_TINY if not arg.startswith("init=")]


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [f"output_dir={out}", "data.num_identities=3", "data.images_per_identity=2", "verify_identities=3"]
    stages = [f"pretrain_overrides={PRETRAIN}", f"finetune_overrides={FINETUNE}"]
    assert main([*args, "verify_pairs=10", "batch_size=4", *stages]) == 0
    printed = capsys.readouterr().out
    assert "embeddings (6, 128)" in printed and "2 steps, DINO loss" in printed and "not built yet" not in printed
    assert printed.count("2 steps, margin loss") == 2 and "from scratch ->" in printed
    assert (out / "finetune_pretrained" / "config.yaml").read_text().count(str(out / "pretrain")) == 1
    assert (out / "finetune_scratch" / "encoder" / "model.safetensors").exists()
    assert "untrained ->" in printed and "pretrained (AUC" in printed
    assert np.load(out / "embeddings.npy").shape == (6, 128)
    assert np.load(out / "labels.npy").tolist() == [0, 0, 1, 1, 2, 2]
    assert (out / "faces.png").stat().st_size > 0 and (out / "pretrain" / "encoder" / "model.safetensors").exists()
    assert (out / "evaluation" / "report.json").exists() and (out / "export" / "model_images_only.onnx").exists()
    assert "min cosine" in printed and "synthetic_held_out" in printed
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["num_identities"] == 3


def test_demo_reports_bad_options_in_one_line(tmp_path, capsys):
    assert main([f"output_dir={tmp_path}", "encoder.landmark_set=mediapipe196"]) == 2
    assert main([f"output_dir={tmp_path}", "data.num_identites=3"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "must equal data.landmark_set" in errors[0] and "did you mean 'data.num_identities'" in errors[1]
