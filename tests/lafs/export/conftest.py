"""Fixtures of the export tests: a small landmark ViT, synthetic faces, its folder and ONNX files, one encoder of
every kind."""

from __future__ import annotations

import pytest
import timm
import torch

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.data.synthetic import synthetic_batch
from lafs.export import export_onnx, save_encoder

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
