"""Encoder folders and ONNX export: round trips, parity on synthetic faces, dynamic batch, bad inputs, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.data.synthetic import synthetic_batch
from lafs.errors import DataError
from lafs.export import (
    MIN_PARITY_COSINE,
    PREDICTOR_FOLDER,
    OnnxEncoder,
    check_onnx_parity,
    encoder_config,
    encoder_folder,
    export_onnx,
    load_any_encoder,
    load_encoder,
    load_encoder_and_predictor,
    predictor_folder,
    save_encoder,
)
from lafs.models.image_encoder import ImageEncoder
from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor, save_landmark_predictor
from tests.conftest import ROOT
from tools.export import main

ARCH = "lafs_vit_nano_p8_112"
SMALL = {"landmark_set": "mediapipe49", "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model(ARCH, **SMALL).eval()


@pytest.fixture(scope="module")
def faces():
    return synthetic_batch("mediapipe49", 5)


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    return save_encoder(model, tmp_path_factory.mktemp("export") / "encoder", {"test": True})


@pytest.fixture(scope="module", params=[False, True], ids=["with_landmarks", "images_only"])
def onnx_file(request, model, tmp_path_factory):
    name = "model_images_only.onnx" if request.param else "model.onnx"
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / name, images_only=request.param)


def test_folder_round_trip(model, folder, faces):
    images, landmarks = faces
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ARCH and config["source"] == {"test": True}
    assert config["model_args"] == {**SMALL, "landmark_fit": "none"}
    assert sorted(p.name for p in folder.iterdir()) == [".lafs-output.json", "config.json", "model.safetensors"]
    with torch.no_grad():
        expected = model(images, landmarks)
        loaded = load_encoder(folder).eval()
        through_timm = timm.create_model(
            ARCH, pretrained=True, pretrained_cfg_overlay={"file": str(folder / "model.safetensors")}, **SMALL
        ).eval()
        for other in (loaded, through_timm, load_any_encoder(folder).eval()):
            torch.testing.assert_close(other(images, landmarks), expected, rtol=0, atol=0)


def test_run_dir_loads_its_encoder(model, tmp_path, faces):
    save_encoder(model, tmp_path / "run" / "encoder")
    with torch.no_grad():
        assert torch.equal(load_any_encoder(tmp_path / "run").eval()(faces[0]), model(faces[0]))


def test_encoder_folder_resolves_a_run_directory_or_an_encoder_folder(model, tmp_path):
    run = tmp_path / "run"
    save_encoder(model, run / "encoder")
    assert encoder_folder(run) == encoder_folder(run / "encoder") == run / "encoder"
    assert encoder_folder(str(run)) == run / "encoder"
    for bad in (tmp_path / "nowhere", tmp_path, run / "encoder" / "config.json"):
        with pytest.raises(DataError, match="not a run directory") as caught:
            encoder_folder(bad)
        assert str(bad) in str(caught.value) and "\n" not in str(caught.value)


def test_predictor_folder_inside_an_export_or_beside_a_run_encoder(model, tmp_path):
    predictor = build_landmark_predictor(
        LandmarkPredictorConfig(backbone="mobilenetv3_small_050", landmark_set="mediapipe49")
    )
    run = tmp_path / "run"
    save_encoder(model, run / "encoder")
    assert predictor_folder(run / "encoder") is None
    assert load_encoder_and_predictor(run)[1] is None
    save_landmark_predictor(predictor, run / PREDICTOR_FOLDER)
    assert predictor_folder(encoder_folder(run)) == run / PREDICTOR_FOLDER
    exported = save_encoder(model, tmp_path / "export" / "folder", {"x": 1}, landmark_predictor=predictor)
    assert sorted(p.name for p in exported.iterdir()) == [
        ".lafs-output.json",
        "config.json",
        "landmark_predictor",
        "model.safetensors",
    ]
    assert not any(p.name.startswith(".") for p in exported.parent.iterdir())
    assert predictor_folder(exported) == exported / PREDICTOR_FOLDER
    for path in (run, exported):
        encoder, loaded = load_encoder_and_predictor(path)
        assert encoder.landmark_set == "mediapipe49" and loaded is not None and loaded.cfg == predictor.cfg
        assert isinstance(load_any_encoder(path), ImageEncoder)


def test_onnx_parity_and_dynamic_batch(model, onnx_file, faces):
    images, landmarks = faces
    report = check_onnx_parity(model, onnx_file, images, landmarks)
    assert report["min_cosine"] >= MIN_PARITY_COSINE and report["max_abs_diff"] < 1e-4
    assert report["pytorch_ms_per_image"] > 0 and report["onnx_ms_per_image"] > 0 and report["latency_batch"] == 8

    encoder = load_any_encoder(onnx_file)
    assert isinstance(encoder, OnnxEncoder) and encoder.num_features == 32
    with torch.no_grad():
        for batch in (1, 5):
            points = landmarks[:batch] if encoder.needs_landmarks else None
            out = encoder(images[:batch], points)
            assert out.shape == (batch, 32) and out.dtype == torch.float32
            torch.testing.assert_close(out, model(images[:batch], points), rtol=1e-4, atol=1e-5)


def test_onnx_files_declare_a_dynamic_batch(onnx_file):
    import onnx

    graph = onnx.load(str(onnx_file)).graph
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [value.name for value in graph.output] == ["embedding"]


def test_landmark_arguments_are_checked(tmp_path, model, faces):
    images, landmarks = faces
    with_landmarks = OnnxEncoder(export_onnx(model, tmp_path / "a.onnx", images_only=False))
    images_only = OnnxEncoder(export_onnx(model, tmp_path / "b.onnx", images_only=True))
    with pytest.raises(ValueError, match="takes landmarks"):
        with_landmarks(images)
    with pytest.raises(ValueError, match="images-only"):
        images_only(images, landmarks)
    # Moved landmarks change the embedding of the landmark form only.
    assert not torch.allclose(with_landmarks(images, landmarks), with_landmarks(images, landmarks + 3))


def test_parity_failure_is_a_data_error(tmp_path, faces):
    torch.manual_seed(1)
    model = timm.create_model(ARCH, **SMALL).eval()
    path = export_onnx(model, tmp_path / "model_images_only.onnx", images_only=True)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.mul_(-3.0)
    with pytest.raises(DataError, match="differs from PyTorch"):
        check_onnx_parity(model, path, faces[0])


@pytest.mark.parametrize("content", [None, b"not an onnx model"], ids=["missing", "garbage"])
def test_bad_onnx_file(tmp_path, content):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_any_encoder(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def _architecture_changed(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "lafs_vit_base_p8_112"
    config["model_args"].update(embed_dim=768, depth=12, num_heads=12)
    (folder / "config.json").write_text(json.dumps(config))


def _landmark_set_changed(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["landmark_set"] = "mediapipe196"
    (folder / "config.json").write_text(json.dumps(config))


def _config_changed(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _weights_truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


@pytest.mark.parametrize(
    "corrupt",
    [
        _architecture_changed,
        _landmark_set_changed,
        lambda folder: (folder / "model.safetensors").unlink(),
        lambda folder: (folder / "config.json").write_text("{"),
        _weights_truncated,
        lambda folder: (folder / "model.safetensors").write_bytes(b""),
        lambda folder: _config_changed(folder, architecture="vit_tiny_patch16_224"),
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


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_weights_truncated, "model.safetensors: unreadable weights (truncated or not safetensors:"),
        (lambda folder: (folder / "model.safetensors").write_bytes(b""), "model.safetensors: unreadable weights"),
        (
            lambda folder: _config_changed(folder, architecture="vit_tiny_patch16_224"),
            "config.json: architecture 'vit_tiny_patch16_224' is a timm model, not a lafs encoder (known: lafs_vit_",
        ),
        (
            lambda folder: _config_changed(folder, architecture="no_such_net"),
            "config.json: architecture 'no_such_net' is not a lafs encoder (known: lafs_vit_",
        ),
        (
            lambda folder: _config_changed(folder, model_args=[1, 2]),
            "config.json: model_args must be a mapping of keyword arguments, got [1, 2]",
        ),
        (
            lambda folder: _config_changed(folder, landmark_set="mediapipe196"),
            "config.json: landmark_set 'mediapipe196' disagrees with the model's mediapipe49",
        ),
    ],
    ids=["truncated_weights", "empty_weights", "timm", "unknown", "model_args", "landmark_set"],
)
def test_bad_folder_message_says_what_is_wrong(model, tmp_path, corrupt, message):
    folder = save_encoder(model, tmp_path / "encoder")
    corrupt(folder)
    with pytest.raises(DataError) as caught:
        load_encoder(folder)
    assert str(caught.value).startswith(f"{folder}") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_architecture_that_disagrees_with_model_args(tmp_path):
    # model_args are what the weights fit, so they are authoritative: an architecture name whose registered size
    # they contradict, while they are exactly another registered size, is a renamed (mislabelled) encoder.
    nano = timm.create_model(ARCH, landmark_set="mediapipe49")
    folder = save_encoder(nano, tmp_path / "encoder")
    _config_changed(folder, architecture="lafs_vit_small_p8_112")
    with pytest.raises(DataError) as caught:
        load_encoder(folder)
    assert str(caught.value) == (
        f"{folder}: config.json: architecture lafs_vit_small_p8_112 disagrees with model_args "
        "(embed_dim 128, depth 4, num_heads 4: those of lafs_vit_nano_p8_112)"
    )
    # A custom size of a registered family (the name is the timm entry point, model_args its shape) still loads.
    assert load_encoder(save_encoder(timm.create_model(ARCH, **SMALL), tmp_path / "custom")).embed_dim == 32


def test_landmark_fit_travels_with_the_exported_encoder(tmp_path, faces):
    images, landmarks = faces
    torch.manual_seed(2)
    fitted = timm.create_model(ARCH, **SMALL, landmark_fit="minmax").eval()
    folder = save_encoder(fitted, tmp_path / "encoder")
    assert json.loads((folder / "config.json").read_text())["model_args"]["landmark_fit"] == "minmax"
    loaded = load_encoder(folder).eval()
    assert loaded.landmark_fit == "minmax"
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, landmarks + 5.0), fitted(images, landmarks + 5.0), rtol=0, atol=0)


def test_an_encoder_exported_before_landmark_fit_loads_as_none(model, tmp_path, faces):
    folder = save_encoder(model, tmp_path / "encoder")
    config = json.loads((folder / "config.json").read_text())
    del config["model_args"]["landmark_fit"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_encoder(folder).eval()
    assert loaded.landmark_fit == "none"
    with torch.no_grad():
        torch.testing.assert_close(loaded(*faces), model(*faces), rtol=0, atol=0)
    config["model_args"]["landmark_fit"] = "stretch"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"config.json \(landmark_fit must be one of none, minmax") as caught:
        load_encoder(folder)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("images_only", [False, True], ids=["with_landmarks", "images_only"])
def test_onnx_parity_with_the_minmax_fit(tmp_path, faces, images_only):
    images, landmarks = faces
    torch.manual_seed(3)
    fitted = timm.create_model(ARCH, **SMALL, landmark_fit="minmax").eval()
    path = export_onnx(fitted, tmp_path / "model.onnx", images_only=images_only)
    points = None if images_only else landmarks * 0.7 + 9.0  # a shrunk face: the fit must stretch it in the graph
    report = check_onnx_parity(fitted, path, images, points)
    assert report["min_cosine"] >= MIN_PARITY_COSINE and report["max_abs_diff"] < 1e-4
    if not images_only:
        with torch.no_grad():
            # The graph fits its input: a moved and scaled copy of the same face gives the same embedding.
            encoder = OnnxEncoder(path)
            torch.testing.assert_close(encoder(images, points), encoder(images, points * 0.9 + 3.0), atol=1e-4, rtol=0)


# -- every kind of encoder, timm's hub format ---------------------------------------------------------------------

KINDS = {
    "landmark_vit": (ARCH, SMALL),
    "iresnet": ("iresnet50", {"widths": (8, 8, 16, 16), "num_features": 32}),
    "timm": ("lafs_timm_encoder", {"backbone": "test_convnext", "num_features": 32}),
}


@pytest.fixture(scope="module", params=list(KINDS))
def kind_folder(request, tmp_path_factory):
    architecture, args = KINDS[request.param]
    torch.manual_seed(0)
    model = timm.create_model(architecture, **args).eval()
    return request.param, model, save_encoder(model, tmp_path_factory.mktemp(request.param) / "encoder")


def test_every_encoder_loads_with_timm_local_dir_and_nothing_else(kind_folder, faces):
    kind, model, folder = kind_folder
    images, landmarks = faces
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == model.pretrained_cfg["architecture"] and config["num_classes"] == 0
    assert config["num_features"] == model.num_features and isinstance(config["model_args"], dict)
    assert {key: config["pretrained_cfg"][key] for key in ("input_size", "mean", "std", "interpolation")} == {
        "input_size": [3, 112, 112],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bilinear",
    }
    assert config["format"] == "lafs-encoder" and config["version"] == 2 and "tag" not in config["pretrained_cfg"]
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(loaded) is type(model)
    points = landmarks if kind == "landmark_vit" else None
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, points), model(images, points), rtol=0, atol=0)
        torch.testing.assert_close(load_encoder(folder).eval()(images, points), model(images, points), rtol=0, atol=0)
    if kind == "landmark_vit":
        assert loaded.landmark_set == "mediapipe49" and config["landmark_set"] == "mediapipe49"
    # A re-export of the reloaded model is the same record (the local folder it came from is not written down).
    assert encoder_config(loaded) == {**config, "source": {}}


def test_the_folder_is_a_hugging_face_repository(kind_folder, monkeypatch, faces):
    """``hf-hub:`` reads the same files: hub downloads are served from the folder (no network here)."""
    import timm.models._hub as hub

    kind, model, folder = kind_folder

    def download(repo_id: str, filename: str, **_: object) -> str:
        assert repo_id == "someone/face-encoder"
        if not (folder / filename).is_file():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(filename)
        return str(folder / filename)

    monkeypatch.setattr(hub, "hf_hub_download", download)
    loaded = timm.create_model("hf-hub:someone/face-encoder", pretrained=True).eval()
    images, landmarks = faces
    points = landmarks if kind == "landmark_vit" else None
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, points), model(images, points), rtol=0, atol=0)


def test_a_version_1_folder_still_loads(model, tmp_path, faces):
    """The layout written before timm's hub format: model_args and normalisation at the top, no pretrained_cfg."""
    folder = save_encoder(model, tmp_path / "old")
    current = json.loads((folder / "config.json").read_text())
    old = {
        "format": "lafs-encoder",
        "version": 1,
        "architecture": ARCH,
        "model_args": SMALL,
        "input_size": [3, 112, 112],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "landmark_set": "mediapipe49",
        "template": current["template"],
        "patch_size": 8,
        "num_features": 32,
        "source": {},
    }
    (folder / "config.json").write_text(json.dumps(old))
    images, landmarks = faces
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(folder).eval()(images, landmarks), model(images, landmarks))


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
