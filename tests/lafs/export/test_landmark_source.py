"""An encoder folder records the landmark source it was trained with; consumers use it (auto), warn on another
choice, and refuse one the model cannot take; the ONNX export says what its images-only graph computes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import timm
import torch

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.data.synthetic import synthetic_batch
from lafs.errors import DataError
from lafs.evaluation.verification import embed_images
from lafs.export import (
    PREDICTOR_FOLDER,
    OnnxEncoder,
    encoder_config,
    open_encoder,
    recorded_landmark_source,
    save_encoder,
)
from lafs.landmarks.sets import get_landmark_set
from lafs.models.image_encoder import ImageEncoder
from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor, save_landmark_predictor
from lafs.models.vit import LandmarkViT
from tools.export import main as export_main

ARCH = "lafs_vit_nano_p8_112"
SMALL = {"landmark_set": "mediapipe49", "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def model() -> LandmarkViT:
    torch.manual_seed(0)
    return timm.create_model(ARCH, **SMALL).eval()


def drop_record(folder) -> None:
    """Make ``folder`` look like one written before the landmark source was recorded."""
    config = json.loads((folder / "config.json").read_text())
    del config["landmark_source"]
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("source", ["template", "mediapipe", "predictor"])
def test_the_recorded_source_round_trips(model, tmp_path, source):
    folder = save_encoder(model, tmp_path / "encoder", landmark_source=source)
    assert json.loads((folder / "config.json").read_text())["landmark_source"] == source
    assert recorded_landmark_source(folder) == (source, True)


def small_predictor():
    return build_landmark_predictor(
        LandmarkPredictorConfig(backbone="mobilenetv3_small_050", landmark_set="mediapipe49")
    )


def test_folders_written_before_the_record(model, tmp_path):
    folder = save_encoder(model, tmp_path / "run" / "encoder")
    drop_record(folder)
    assert recorded_landmark_source(folder) == ("template", False)
    # A fine-tuned LAFS run with its predictor beside the encoder was always run with that predictor.
    save_landmark_predictor(small_predictor(), tmp_path / "run" / PREDICTOR_FOLDER)
    assert recorded_landmark_source(folder) == ("predictor", False)


def test_an_unknown_source_is_refused(model, tmp_path):
    with pytest.raises(Exception, match="unknown landmark source 'dlib'"):
        encoder_config(model, landmark_source="dlib")
    folder = save_encoder(model, tmp_path / "encoder")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "landmark_source": "dlib"}))
    with pytest.raises(DataError, match=r"config.json: landmark_source: unknown landmark source 'dlib'"):
        recorded_landmark_source(folder)


def test_auto_uses_the_recorded_source_and_another_choice_warns(model, tmp_path, caplog):
    folder = save_encoder(model, tmp_path / "encoder", landmark_source="mediapipe")
    with caplog.at_level(logging.WARNING, logger="lafs.landmarks"):
        encoder, choice = open_encoder(folder)
    assert caplog.text == "" and isinstance(encoder, LandmarkViT)
    assert (choice.source, choice.recorded, choice.recorded_explicitly) == ("mediapipe", "mediapipe", True)
    assert choice.takes_landmarks and choice.landmark_set == "mediapipe49" and choice.image_size == 112
    with caplog.at_level(logging.WARNING, logger="lafs.landmarks"):
        _, choice = open_encoder(folder, "template")
    assert choice.source == "template" and "trained with mediapipe" in caplog.text and "depart" in caplog.text
    with pytest.raises(DataError, match=r"has no landmark predictor \(--landmarks predictor\)"):
        open_encoder(folder, "predictor")


def test_a_predictor_encoder_places_its_own_landmarks(model, tmp_path):
    folder = save_encoder(model, tmp_path / "encoder", landmark_predictor=small_predictor())
    assert recorded_landmark_source(folder) == ("predictor", True)  # the default with a predictor
    encoder, choice = open_encoder(folder)
    assert isinstance(encoder, ImageEncoder) and choice.source == "predictor" and not choice.takes_landmarks
    encoder, choice = open_encoder(folder, "template")
    assert isinstance(encoder, LandmarkViT) and choice.takes_landmarks
    (folder / PREDICTOR_FOLDER / "config.json").unlink()  # the record says predictor, but it is gone
    with pytest.raises(DataError, match="records landmark_source predictor"):
        open_encoder(folder)


def test_embedding_with_landmarks_mirrors_them_as_training_does(model):
    """embed_images with landmarks: model(x, l) + model(mirror x, mirrored l), x -> 112 - x, ids swapped."""
    images, _ = synthetic_batch("mediapipe49", 3)
    faces = [((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8) for image in images]
    rng = np.random.default_rng(0)
    landmarks = (get_landmark_set("mediapipe49").template + rng.normal(0, 2, (3, 49, 2))).astype(np.float32)
    permutation = get_landmark_set("mediapipe49").flip_permutation
    got = embed_images(model, faces, batch_size=2, landmarks=landmarks, flip_permutation=permutation)
    pixels = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() / 127.5 - 1
    mirrored = landmarks.copy()
    mirrored[..., 0] = 112 - mirrored[..., 0]
    mirrored = mirrored[:, permutation]
    with torch.no_grad():
        expected = model(pixels, torch.from_numpy(landmarks)) + model(pixels.flip(-1), torch.from_numpy(mirrored))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    # The landmarks are used: the template gives other embeddings, and unmirrored landmarks on mirrored images too.
    assert not np.allclose(got, embed_images(model, faces))
    no_flip = embed_images(model, faces, flip=False, landmarks=landmarks)
    np.testing.assert_allclose(no_flip, model(pixels, torch.from_numpy(landmarks)).detach().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="flip_permutation"):
        embed_images(model, faces, landmarks=landmarks)


def test_onnx_export_of_a_mediapipe_encoder(model, tmp_path, caplog, capsys):
    run = tmp_path / "run"
    save_encoder(model, run / "encoder", landmark_source="mediapipe")
    out = tmp_path / "exported"
    assert export_main(["--input", str(run), "--output", str(out), "--onnx", "--faces", "2"]) == 0
    printed = capsys.readouterr().out
    assert "trained with mediapipe landmarks" in printed and "model_images_only.onnx not written" in printed
    assert not (out / "model_images_only.onnx").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["landmark_source"] == "mediapipe" and "not written" in config["onnx"]["images_only"]
    assert [(e["file"], e["landmarks"]) for e in config["onnx"]["files"]] == [("model.onnx", "input")]
    encoder, choice = open_encoder(out / "model.onnx")
    assert isinstance(encoder, OnnxEncoder) and choice.source == "mediapipe" and choice.takes_landmarks
    with pytest.raises(DataError, match="holds no landmark predictor"):
        open_encoder(out / "model.onnx", "predictor")

    # Asked for, the images-only file is written on the template: recorded, and its users warned.
    assert (
        export_main(["--input", str(run), "--output", str(out), "--onnx", "--faces", "2", "--landmarks", "template"])
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["landmark_source"] == "mediapipe"
    assert config["onnx"]["images_only"].endswith("with the template, departing from training (mediapipe)")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lafs.landmarks"):
        encoder, choice = open_encoder(out / "model_images_only.onnx")
    assert choice.source == "template" and not choice.takes_landmarks and "trained with mediapipe" in caplog.text
    with pytest.raises(DataError, match="computes its landmarks inside the graph"):
        open_encoder(out / "model_images_only.onnx", "mediapipe")
    images, _ = synthetic_batch("mediapipe49", 2)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), model(images), rtol=1e-4, atol=1e-5)


def test_export_landmarks_option_needs_onnx(model, tmp_path, capsys):
    save_encoder(model, tmp_path / "encoder")
    args = ["--input", str(tmp_path / "encoder"), "--output", str(tmp_path / "out"), "--landmarks", "template"]
    assert export_main(args) == 2
    assert "needs --onnx" in capsys.readouterr().err and not (tmp_path / "out").exists()
