"""Encoder folders (lafs.export.weights): round trips, run directories, timm's hub format, bad folders in one line."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.errors import DataError
from lafs.export import (
    PREDICTOR_FOLDER,
    encoder_config,
    encoder_folder,
    load_any_encoder,
    load_encoder,
    load_encoder_and_predictor,
    predictor_folder,
    save_encoder,
)
from lafs.models.image_encoder import ImageEncoder
from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor, save_landmark_predictor
from tests.lafs.export.conftest import ARCH, SMALL
from tests.lafs.export.corrupt import config_changed, weights_truncated


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


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (weights_truncated, "model.safetensors: unreadable weights (truncated or not safetensors:"),
        (lambda folder: (folder / "model.safetensors").write_bytes(b""), "model.safetensors: unreadable weights"),
        (
            lambda folder: config_changed(folder, architecture="vit_tiny_patch16_224"),
            "config.json: architecture 'vit_tiny_patch16_224' is a timm model, not a lafs encoder (known: lafs_vit_",
        ),
        (
            lambda folder: config_changed(folder, architecture="no_such_net"),
            "config.json: architecture 'no_such_net' is not a lafs encoder (known: lafs_vit_",
        ),
        (
            lambda folder: config_changed(folder, model_args=[1, 2]),
            "config.json: model_args must be a mapping of keyword arguments, got [1, 2]",
        ),
        (
            lambda folder: config_changed(folder, landmark_set="mediapipe196"),
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
    config_changed(folder, architecture="lafs_vit_small_p8_112")
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
