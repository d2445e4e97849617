"""ONNX export (lafs.export.onnx): parity with PyTorch on synthetic faces, dynamic batch, bad files in one line."""

from __future__ import annotations

import pytest
import timm
import torch

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.errors import DataError
from lafs.export import (
    MIN_PARITY_COSINE,
    OnnxEncoder,
    check_onnx_parity,
    export_onnx,
    load_any_encoder,
)
from tests.lafs.export.conftest import ARCH, SMALL


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
