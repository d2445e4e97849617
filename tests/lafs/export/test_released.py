"""Importing released LAFS checkpoints: every layout, every tensor used, the released forward, one-line errors."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.heads import MarginHead
from lafs.errors import DataError
from lafs.export import load_any_encoder
from lafs.export.released import import_released_checkpoint, load_released_head
from lafs.models import PartFViT
from lafs.models.image_encoder import ImageEncoder
from lafs.models.released_mobilenet import ReleasedLandmarkNet
from tests.lafs.models.released_reference import (
    reference_forward,
    released_self_supervised,
    released_supervised,
)

# Released name -> ours, written out by hand for block 0 and the rest of the ViT.
PAIRS = {
    "pos_embedding": "pos_embed",
    "cls_token": "cls_token",
    "patch_to_embedding.weight": "patch_embed.proj.weight",
    "patch_to_embedding.bias": "patch_embed.proj.bias",
    "mlp_head.0.weight": "norm.weight",
    "mlp_head.0.bias": "norm.bias",
    "transformer.layers.0.0.fn.norm.weight": "blocks.0.norm1.weight",
    "transformer.layers.0.0.fn.norm.bias": "blocks.0.norm1.bias",
    "transformer.layers.0.0.fn.fn.to_qkv.weight": "blocks.0.attn.qkv.weight",
    "transformer.layers.0.0.fn.fn.to_out.0.weight": "blocks.0.attn.proj.weight",
    "transformer.layers.0.0.fn.fn.to_out.0.bias": "blocks.0.attn.proj.bias",
    "transformer.layers.0.1.fn.norm.weight": "blocks.0.norm2.weight",
    "transformer.layers.0.1.fn.norm.bias": "blocks.0.norm2.bias",
    "transformer.layers.0.1.fn.fn.net.0.weight": "blocks.0.mlp.fc1.weight",
    "transformer.layers.0.1.fn.fn.net.0.bias": "blocks.0.mlp.fc1.bias",
    "transformer.layers.0.1.fn.fn.net.3.weight": "blocks.0.mlp.fc2.weight",
    "transformer.layers.0.1.fn.fn.net.3.bias": "blocks.0.mlp.fc2.bias",
}


def saved(path: Path, checkpoint: object) -> Path:
    torch.save(checkpoint, path)
    return path


def faces(count: int = 2) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.rand(count, 3, 112, 112) * 2 - 1


@pytest.fixture(scope="module")
def supervised(tmp_path_factory) -> tuple[dict, Path]:
    """A supervised checkpoint at the released width (768, 11 heads of 64, MLP 2048), one block, DDP-saved."""
    state = released_supervised(depth=1, dim=768, heads=11, mlp=2048, classes=5)
    folder = tmp_path_factory.mktemp("released")
    path = saved(folder / "Backbone_VIT_land_8.pth", {f"module.{k}": v for k, v in state.items()})
    return state, path


@pytest.fixture(scope="module")
def imported(supervised, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "partfvit"
    import_released_checkpoint(supervised[1], out)
    return out


def test_every_tensor_lands_where_the_released_model_used_it(supervised, imported):
    state, _ = supervised
    encoder = load_file(str(imported / "model.safetensors"))
    network = load_file(str(imported / "landmark_predictor" / "model.safetensors"))
    vit_keys = [k for k in state if not k.startswith(("stn.", "output_layer.", "loss."))]
    assert len(encoder) == len(vit_keys) == len(PAIRS)
    for released, ours in PAIRS.items():
        assert torch.equal(encoder[ours], state[released]), released
    assert set(network) == {k for k in state if k.startswith(("stn.", "output_layer."))}
    assert all(torch.equal(network[k], state[k]) for k in network)
    assert torch.equal(load_released_head(imported), state["loss.weight"])


def test_imported_model_is_the_released_forward(supervised, imported):
    state, _ = supervised
    model = load_any_encoder(imported).eval()
    assert isinstance(model, ImageEncoder) and isinstance(model.encoder, PartFViT)
    assert isinstance(model.landmark_predictor, ReleasedLandmarkNet)
    images = faces()
    with torch.no_grad():
        landmarks = model.landmark_predictor(images)
        expected = reference_forward(state, images, landmarks, heads=11)
        actual = model(images)
    assert torch.nn.functional.cosine_similarity(actual, expected).min() > 0.99999
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    config = json.loads((imported / "config.json").read_text())
    assert config["channel_order"] == "bgr" and config["source"]["layout"] == "DDP state dict (module.)"
    head = {"file": "margin_head.safetensors", "num_classes": 5, "name": "cosface", "scale": 64.0}
    assert config["source"]["margin_head"] == {**head, "margins": [1.0, 0.0, 0.4]}


def test_margin_head_continues_in_finetunings_head(imported):
    weight = load_released_head(imported)
    head = MarginHead(weight.shape[0], weight.shape[1], margins=(1.0, 0.0, 0.4))
    head.load_state_dict({"weight": weight})
    assert load_released_head(imported.parent / "nowhere") is None


@pytest.mark.parametrize("layout", ["state dict", "model", "model without prefix"])
def test_plain_and_model_layouts(tmp_path, layout):
    state = released_supervised()
    checkpoint = {
        "state dict": state,
        "model": {"model": {f"encoder.{k}": v for k, v in state.items()} | {"decoder.0.weight": torch.zeros(3, 3)}},
        "model without prefix": {"model": state, "epoch": 3},
    }[layout]
    summary = import_released_checkpoint(saved(tmp_path / "c.pth", checkpoint), tmp_path / "out")
    assert summary.model_args == {
        "landmark_set": "mediapipe196",
        "embed_dim": 64,
        "depth": 1,
        "num_heads": 2,
        "head_dim": 64,
        "mlp_dim": 96,
    }
    assert summary.classifier == (10, 64) and summary.landmark_network
    model = load_any_encoder(tmp_path / "out").eval()
    images = faces()
    with torch.no_grad():
        expected = reference_forward(state, images, model.landmark_predictor(images), heads=2)
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-4)
    if layout == "model":
        assert "decoder.*" in summary.set_aside


def test_self_supervised_teacher_with_the_landmark_network_of_a_supervised_checkpoint(tmp_path):
    checkpoint = saved(tmp_path / "checkpoint0040.pth", released_self_supervised())
    supervised_state = released_supervised()
    landmarks = saved(tmp_path / "supervised.pth", supervised_state)
    summary = import_released_checkpoint(checkpoint, tmp_path / "out", landmark_network=landmarks)
    assert summary.layout == "self-supervised checkpoint (teacher)" and summary.classifier is None
    assert summary.set_aside["head.*"].startswith("2 tensors: the DINO projection head")
    assert "student" in summary.set_aside["(entries)"] and "args" in summary.set_aside["(entries)"]
    teacher = {k.removeprefix("backbone."): v for k, v in released_self_supervised()["teacher"].items()}
    model = load_any_encoder(tmp_path / "out").eval()
    images = faces()
    with torch.no_grad():  # the teacher's ViT, the supervised checkpoint's landmark network
        network = model.landmark_predictor.output_layer[1].weight
        torch.testing.assert_close(network, supervised_state["output_layer.1.weight"])
        expected = reference_forward(teacher, images, model.landmark_predictor(images), heads=2)
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-4)
    # Without a landmark network the encoder stands alone and samples the grid.
    summary = import_released_checkpoint(checkpoint, tmp_path / "alone")
    assert summary.landmark_network == "" and not (tmp_path / "alone" / "landmark_predictor").exists()
    assert isinstance(load_any_encoder(tmp_path / "alone"), PartFViT)


def test_loss_weight_of_a_self_supervised_teacher_is_set_aside(tmp_path):
    checkpoint = released_self_supervised()
    checkpoint["teacher"]["backbone.loss.weight"] = torch.randn(30, 64)
    summary = import_released_checkpoint(saved(tmp_path / "c.pth", checkpoint), tmp_path / "out")
    assert summary.classifier is None and "never trained" in summary.set_aside["loss.weight"]
    assert not (tmp_path / "out" / "margin_head.safetensors").exists()


def one_line(tmp_path: Path, checkpoint: object, match: str, **kwargs) -> None:
    with pytest.raises(DataError, match=match) as error:
        import_released_checkpoint(saved(tmp_path / "c.pth", checkpoint), tmp_path / "out", **kwargs)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_unknown_missing_and_misshapen_tensors_are_one_line(tmp_path):
    state = released_supervised()
    one_line(tmp_path, {**state, "global_token.1.weight": torch.zeros(64, 160)}, "not part of .*global_token.1.weight")
    missing = {k: v for k, v in state.items() if k != "transformer.layers.0.1.fn.norm.bias"}
    one_line(tmp_path, missing, "ViT tensors do not fit a Part fViT .*blocks.0.norm2.bias")
    misshapen = {**state, "stn.features.0.0.weight": torch.zeros(16, 3, 5, 5)}
    one_line(tmp_path, misshapen, "landmark network does not fit .*stn.features.0.0.weight")
    overlap = {**state, "pos_embedding": torch.zeros(1, 145, 64), "patch_to_embedding.weight": torch.zeros(64, 300)}
    one_line(tmp_path, overlap, "145 rows and patch_to_embedding takes 300 numbers")
    one_line(tmp_path, {"foo": 1, "bar": [2]}, r"unknown checkpoint layout: a dict of 2 entries \(foo, bar\)")
    one_line(tmp_path, [1, 2], "unknown checkpoint layout: a list")
    one_line(
        tmp_path,
        released_self_supervised(),
        "holds no landmark network",
        landmark_network=saved(tmp_path / "ssl.pth", released_self_supervised()),
    )


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    one_line(tmp_path, {"model": Planted()}, "refused: unpickling it needs .*mkdir")
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable torch checkpoint"):
        import_released_checkpoint(tmp_path / "junk.pth", tmp_path / "out")
    with pytest.raises(DataError, match="no such checkpoint file"):
        import_released_checkpoint(tmp_path / "nowhere.pth", tmp_path / "out")
