"""tools.import_checkpoint, and the commands that take the folder it writes: evaluate, embed, export --onnx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lafs.data.pairs import write_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig, synthetic_pairs
from lafs.export import OnnxEncoder, load_any_encoder
from tests.conftest import write_face_folder
from tests.lafs.models.released_reference import released_self_supervised, released_supervised
from tools.embed import main as embed_main
from tools.evaluate import main as evaluate_main
from tools.export import main as export_main
from tools.import_checkpoint import main


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("released")
    torch.save({f"module.{k}": v for k, v in released_supervised().items()}, root / "part_fvit.pth")
    assert main(["--input", str(root / "part_fvit.pth"), "--output", str(root / "imported")]) == 0
    return root / "imported"


def test_import_prints_what_it_read_and_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(released_self_supervised(), tmp_path / "checkpoint.pth")
    torch.save(released_supervised(), tmp_path / "supervised.pth")
    argv = ["--input", str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "out")]
    assert main([*argv, "--landmark-network", str(tmp_path / "supervised.pth")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"read {tmp_path / 'checkpoint.pth'}: self-supervised checkpoint (teacher)"
    assert printed[1].startswith("  encoder: lafs_partfvit_b_p8_112 (landmark_set mediapipe196, embed_dim 64")
    assert printed[2].startswith("  landmark network: released MobileNetV3-large from ")
    assert any(line.startswith("  not imported: head.*: 2 tensors") for line in printed)
    assert printed[-1] == f"wrote {tmp_path / 'out'}"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main([*argv[:2], "--output", str(tmp_path / "mine")]) == 2  # a foreign folder needs --overwrite
    assert main(["--input", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "x")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "pass --overwrite" in errors[0] and "no such checkpoint file" in errors[1]


def test_evaluate_and_embed_take_the_imported_folder(imported: Path, tmp_path: Path) -> None:
    faces = SyntheticFaces(SyntheticFacesConfig(num_identities=4, images_per_identity=3, seed=1))
    images, issame = synthetic_pairs(faces, 10, seed=1)
    write_bin(tmp_path / "lfw.bin", list(zip(images[0::2], images[1::2], strict=True)), issame)
    argv = ["--input", str(imported), "--bin", str(tmp_path / "lfw.bin"), "--output", str(tmp_path / "report")]
    assert evaluate_main([*argv, "--batch-size", "8", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["encoder"]["architecture"] == "lafs_partfvit_b_p8_112"
    assert report["sets"]["lfw"]["embedding_dim"] == 64

    folder, _ = write_face_folder(tmp_path / "faces", identities=1, per_identity=2)
    out = tmp_path / "embeddings.npy"
    assert embed_main(["--input", str(folder), "--model", str(imported), "--output", str(out), "--device", "cpu"]) == 0
    embeddings = np.load(out)
    assert embeddings.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_export_onnx_keeps_the_landmark_network_in_the_images_only_graph(imported: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert export_main(["--input", str(imported), "--output", str(out), "--onnx", "--faces", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert {entry["file"] for entry in config["onnx"]["files"]} == {"model.onnx", "model_images_only.onnx"}
    assert all(entry["parity"]["min_cosine"] >= 0.9999 for entry in config["onnx"]["files"])
    images = torch.rand(3, 3, 112, 112) * 2 - 1
    model = load_any_encoder(imported).eval()
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(OnnxEncoder(out / "model_images_only.onnx")(images), expected, rtol=1e-4, atol=1e-4)
    assert json.loads((out / "landmark_predictor" / "config.json").read_text())["kind"] == "released-lafs-mobilenetv3"


def test_an_arcface_torch_backbone_imports_strictly(tmp_path, capsys):
    """A backbone.pth in arcface_torch's names (DDP prefix, inside checkpoint_gpu_0.pt) -> an iresnet folder."""
    import timm

    from lafs.export import load_encoder

    torch.manual_seed(0)
    source = timm.create_model("iresnet18", widths=[8, 8, 16, 16], num_features=32).eval()
    state = {f"module.{key}": value for key, value in source.state_dict().items()}
    torch.save({"state_dict_backbone": state, "epoch": 3}, tmp_path / "checkpoint_gpu_0.pt")
    out = tmp_path / "imported"
    arcface = ["--format", "arcface_torch", "--input"]
    assert main([*arcface, str(tmp_path / "checkpoint_gpu_0.pt"), "--output", str(out)]) == 0
    assert "-> iresnet18 (widths [8, 8, 16, 16], num_features 32, img_size 112)" in capsys.readouterr().out
    loaded = load_encoder(out).eval()
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)
    del state["module.fc.bias"]
    torch.save(state, tmp_path / "broken.pth")
    assert main([*arcface, str(tmp_path / "broken.pth"), "--output", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not load into iresnet18" in error and "fc.bias" in error
