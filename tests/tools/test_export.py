"""tools.export never deletes what it did not write; bad --output paths are one-line errors (issue 14)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import lafs  # registers the encoders with timm
import lafs.files
from lafs.cli import KEPT
from lafs.data.synthetic import synthetic_batch
from lafs.errors import DataError
from lafs.export import MIN_PARITY_COSINE, OnnxEncoder, load_any_encoder, load_encoder, save_encoder
from tests.conftest import ROOT
from tests.lafs.export.corrupt import architecture_changed, config_changed, landmark_set_changed, weights_truncated
from tools.export import main

ARCH = "lafs_vit_nano_p8_112"
SMALL = {"landmark_set": "mediapipe49", "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(ARCH, **SMALL).eval()


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_batch("mediapipe49", 5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training run directory: encoder/, checkpoints/ and a config of its own."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    save_encoder(timm.create_model(ARCH, **SMALL).eval(), run / "encoder")
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run / "checkpoints" / "step_00000010" / "model.safetensors").write_bytes(b"state")
    (run / "config.json").write_text('{"task": "pretrain"}\n')
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    return captured.err


def test_refuses_a_foreign_folder_and_overwrite_keeps_its_other_files(run_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "config.json").write_text("{}")
    assert main(["--input", str(run_dir), "--output", str(out)]) == 2
    assert "pass --overwrite" in error_line(capsys)
    assert snapshot(out) == {"notes.txt": b"keep me", "config.json": b"{}"}
    assert main(["--input", str(run_dir), "--output", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    load_encoder(out)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".old", "staging"))]


def test_re_exports_into_a_previous_export_and_drops_only_its_own_stale_files(run_dir, tmp_path):
    out = tmp_path / "export"
    assert main(["--input", str(run_dir), "--output", str(out)]) == 0
    (out / "README.txt").write_text("mine")
    (out / "landmark_predictor").mkdir()  # left over from an export of this kind: recorded, so it may go
    manifest = json.loads((out / ".lafs-output.json").read_text())
    manifest["files"].append("landmark_predictor/config.json")
    (out / "landmark_predictor" / "config.json").write_text("{}")
    (out / ".lafs-output.json").write_text(json.dumps(manifest))
    assert main(["--input", str(run_dir), "--output", str(out)]) == 0  # same kind: no --overwrite needed
    assert (out / "README.txt").read_text() == "mine"
    assert not (out / "landmark_predictor" / "config.json").exists()
    load_encoder(out)


def test_output_is_the_run_directory(run_dir, capsys):
    before = snapshot(run_dir)
    for flags in ([], ["--overwrite"]):
        assert main(["--input", str(run_dir), "--output", str(run_dir), *flags]) == 2
        error_line(capsys)
        assert main(["--input", str(run_dir), "--output", str(run_dir / "encoder"), *flags]) == 2
        error_line(capsys)
    assert snapshot(run_dir) == before


def test_output_inside_the_run_directory_is_written_beside_the_rest(run_dir, tmp_path):
    run = tmp_path / "copy"
    save_encoder(load_encoder(run_dir / "encoder"), run / "encoder")
    assert main(["--input", str(run), "--output", str(run / "exported")]) == 0
    load_encoder(run / "exported")
    assert sorted(p.name for p in run.iterdir()) == ["encoder", "exported"]


def test_output_dot_and_dotdot(run_dir, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    assert main(["--input", str(run_dir), "--output", "."]) == 0  # an empty folder: written in place
    load_encoder(work / "sub")
    monkeypatch.chdir(tmp_path)
    (work / "other").mkdir()
    assert main(["--input", str(run_dir), "--output", "work/other/.."]) == 2  # work/ holds sub/ and other/
    error_line(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*") if ".tmp" in p.name or "staging" in p.name) == []
    assert sorted(p.name for p in work.iterdir()) == ["other", "sub"]


def test_output_is_a_file(run_dir, tmp_path, capsys):
    out = tmp_path / "model.bin"
    out.write_bytes(b"x")
    assert main(["--input", str(run_dir), "--output", str(out), "--overwrite"]) == 2
    assert "not a folder" in error_line(capsys)
    assert out.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_files_follow_the_umask(run_dir, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["--input", str(run_dir), "--output", str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_a_full_disk_keeps_the_previous_export_whole(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["--input", str(run_dir), "--output", str(out)]) == 0
    before = snapshot(out)

    def fills_the_disk(tensors: dict, path: str, metadata: dict | None = None) -> None:
        Path(path).write_bytes(b"half a safetensors file")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(lafs.files, "save_file", fills_the_disk)
    assert main(["--input", str(run_dir), "--output", str(out)]) == 2
    assert error_line(capsys).endswith("model.safetensors: No space left on device\n")
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)  # no staging left
    assert main(["--input", str(run_dir), "--output", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()  # a folder the failed export created goes with it


def test_sigterm_during_an_export_leaves_no_staging_folder(run_dir, tmp_path, capsys, monkeypatch):
    # A scheduler's stop used to kill the export where it stood: a 9.6 MB .lafs-staging-* folder stayed behind.
    real = lafs.files.save_file

    def stopped(tensors: dict, path: str, metadata: dict | None = None) -> None:
        real(tensors, path, metadata=metadata)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next line Python runs

    monkeypatch.setattr(lafs.files, "save_file", stopped)
    out = tmp_path / "out"
    assert main(["--input", str(run_dir), "--output", str(out)]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.endswith(f"terminated (SIGTERM): {KEPT}\n")
    assert not out.exists()  # the folder this export created went with its staging folder
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the entry point's only


# -- the command on good and corrupted folders (moved from tests/lafs/export) ------------------------------------


@pytest.mark.parametrize(
    "corrupt",
    [
        architecture_changed,
        landmark_set_changed,
        lambda folder: (folder / "model.safetensors").unlink(),
        lambda folder: (folder / "config.json").write_text("{"),
        weights_truncated,
        lambda folder: (folder / "model.safetensors").write_bytes(b""),
        lambda folder: config_changed(folder, architecture="vit_tiny_patch16_224"),
    ],
    ids=["architecture", "landmark_set", "no_weights", "bad_json", "truncated_weights", "empty_weights", "timm"],
)
def test_corrupted_folder(model, tmp_path, corrupt, capsys):
    folder = save_encoder(model, tmp_path / "encoder")
    corrupt(folder)
    with pytest.raises(DataError) as caught:
        load_any_encoder(folder)
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)
    out = tmp_path / "out"
    assert main(["--input", str(folder), "--output", str(out), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_cli_exports_with_onnx(model, tmp_path, faces, capsys):
    save_encoder(model, tmp_path / "run" / "encoder")
    out = tmp_path / "exported"
    umask = os.umask(0o022)
    try:
        assert main(["--input", str(tmp_path / "run"), "--output", str(out), "--onnx", "--faces", "3"]) == 0
    finally:
        os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(
        [".lafs-output.json", "config.json", "model.onnx", "model.safetensors", "model_images_only.onnx"], 0o644
    )  # every file follows the umask (mkstemp's and safetensors' 0600 did not)
    printed = capsys.readouterr().out
    for name in ("model.onnx", "model_images_only.onnx"):
        assert name in printed
    assert printed.count("min cosine") == 2 and printed.count("ms/image PyTorch") == 2
    assert sorted(p.name for p in out.iterdir()) == [
        ".lafs-output.json",
        "config.json",
        "model.onnx",
        "model.safetensors",
        "model_images_only.onnx",
    ]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["input"] == str((tmp_path / "run").resolve())
    files = {entry["file"]: entry for entry in config["onnx"]["files"]}
    assert files["model.onnx"]["inputs"] == ["images", "landmarks"]
    assert files["model_images_only.onnx"]["inputs"] == ["images"]
    for entry in files.values():
        assert entry["parity"]["min_cosine"] >= MIN_PARITY_COSINE and entry["parity"]["onnx_ms_per_image"] > 0

    images, landmarks = faces
    with torch.no_grad():
        expected = model(images, landmarks)
        torch.testing.assert_close(load_any_encoder(out)(images, landmarks), expected, rtol=0, atol=0)
        torch.testing.assert_close(
            load_any_encoder(out / "model.onnx")(images, landmarks), expected, rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            load_any_encoder(out / "model_images_only.onnx")(images), model(images), rtol=1e-4, atol=1e-5
        )


def test_cli_without_onnx(model, tmp_path, capsys):
    folder = save_encoder(model, tmp_path / "encoder")
    assert main(["--input", str(folder), "--output", str(tmp_path / "copy")]) == 0
    assert "wrote" in capsys.readouterr().out
    copied = sorted(p.name for p in (tmp_path / "copy").iterdir())
    assert copied == [".lafs-output.json", "config.json", "model.safetensors"]


def test_cli_missing_input(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "tools.export", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "--onnx" in result.stdout


def test_iresnet_exports_one_images_only_onnx_file(tmp_path, faces, capsys):
    torch.manual_seed(0)
    model = timm.create_model("iresnet18", widths=(4, 4, 8, 8), num_features=16).eval()
    save_encoder(model, tmp_path / "run" / "encoder")
    out = tmp_path / "exported"
    assert main(["--input", str(tmp_path / "run"), "--output", str(out), "--onnx", "--faces", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".lafs-output.json",
        "config.json",
        "model.onnx",
        "model.safetensors",
    ]
    printed = capsys.readouterr().out
    assert "iresnet18, 16-d embeddings" in printed and printed.count("min cosine") == 1
    config = json.loads((out / "config.json").read_text())
    assert [entry["inputs"] for entry in config["onnx"]["files"]] == [["images"]]
    onnx_encoder = load_any_encoder(out / "model.onnx")
    assert isinstance(onnx_encoder, OnnxEncoder) and not onnx_encoder.needs_landmarks
    images = faces[0]
    with torch.no_grad():
        for batch in (1, 5):
            torch.testing.assert_close(onnx_encoder(images[:batch]), model(images[:batch]), rtol=1e-4, atol=1e-4)


def test_an_encoder_trained_at_64_px_exports_onnx_checked_at_64_px(tmp_path, capsys):
    # The CPU recipe's ResNet-18 takes 64 x 64 faces: the parity check must feed it those (it fed 112 x 112 once).
    from lafs.models import EncoderConfig, build_any_encoder

    torch.manual_seed(0)
    model = build_any_encoder(EncoderConfig(name="timm:resnet10t", embed_dim=16, model_args={"img_size": 64})).eval()
    save_encoder(model, tmp_path / "run" / "encoder")
    out = tmp_path / "exported"
    assert main(["--input", str(tmp_path / "run"), "--output", str(out), "--onnx", "--faces", "3"]) == 0
    assert "min cosine 0.99999" in capsys.readouterr().out
    assert load_any_encoder(out / "model.onnx")(torch.zeros(2, 3, 64, 64)).shape == (2, 16)
