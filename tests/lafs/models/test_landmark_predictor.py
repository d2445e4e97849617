import json
import warnings

import numpy as np
import pytest
import torch

from lafs.errors import ConfigError, DataError
from lafs.landmarks.sources import scaled_template
from lafs.models.landmark_predictor import (
    LandmarkPredictorConfig,
    build_landmark_predictor,
    load_landmark_predictor,
    save_landmark_predictor,
)

SMALL = LandmarkPredictorConfig(backbone="mobilenetv3_small_050", landmark_set="mediapipe49")


def perturbed(cfg: LandmarkPredictorConfig = SMALL, seed: int = 0):
    """A predictor whose head is no longer zero, so outputs depend on the image and on every weight."""
    torch.manual_seed(seed)
    model = build_landmark_predictor(cfg)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.01)
        model.head.bias.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("train", [True, False])
def test_untrained_predictor_returns_exactly_the_template(train):
    model = build_landmark_predictor(SMALL).train(train)
    out = model(torch.rand(3, 3, 112, 112) * 2 - 1)
    assert out.shape == (3, 49, 2) and out.dtype == torch.float32
    expected = torch.from_numpy(scaled_template("mediapipe49", 112, 112)).expand(3, -1, -1)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_template_follows_image_size():
    model = build_landmark_predictor(LandmarkPredictorConfig(backbone="mobilenetv3_small_050", image_size=64))
    out = model.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 196, 2)
    np.testing.assert_array_equal(out[0].detach().numpy(), scaled_template("mediapipe196", 64, 64))
    assert model.scale == 64 / 8


def test_gradients_reach_head_then_backbone():
    model = build_landmark_predictor(SMALL).train()
    images, target = torch.rand(4, 3, 112, 112) * 2 - 1, torch.rand(4, 49, 2) * 112
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    (model(images) - target).abs().mean().backward()
    # Zero start: the head learns first; the backbone's gradient flows through the (still zero) head weights.
    assert model.head.weight.grad.abs().sum() > 0 and model.head.bias.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    (model(images) - target).abs().mean().backward()
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in backbone_grads)
    assert sum(float(g.abs().sum()) for g in backbone_grads) > 0
    first_conv = next(model.backbone.parameters())
    assert first_conv.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path):
    model = perturbed()
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    folder = save_landmark_predictor(model, tmp_path / "predictor", source={"stage": "test"})
    # The manifest marks the folder as ours, so a later save may replace it (lafs.files.output_folder).
    assert sorted(p.name for p in folder.iterdir()) == [".lafs-output.json", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["backbone"] == "mobilenetv3_small_050" and config["source"] == {"stage": "test"}
    loaded = load_landmark_predictor(folder)
    assert not loaded.training and loaded.landmark_set == "mediapipe49"
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    # Saving again replaces the folder whole.
    save_landmark_predictor(perturbed(seed=1), folder)
    with torch.no_grad():
        assert not torch.equal(load_landmark_predictor(folder)(images), model(images))


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="not a saved landmark predictor") as missing:
        load_landmark_predictor(tmp_path / "nowhere")
    assert "\n" not in str(missing.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"format": "lafs-encoder"}')
    with pytest.raises(DataError, match="not a lafs-landmark-predictor folder"):
        load_landmark_predictor(tmp_path / "bad")
    folder = save_landmark_predictor(perturbed(), tmp_path / "other_set")
    config = json.loads((folder / "config.json").read_text())
    config["config"]["landmark_set"] = "mediapipe196"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"weights do not fit config\.json") as mismatch:
        load_landmark_predictor(folder)
    assert "\n" not in str(mismatch.value)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"backbone": "no_such_net"}, "not a timm model"),
        ({"landmark_set": "mediapipe7"}, "unknown landmark set"),
        ({"dropout": 1.0}, "dropout"),
        ({"image_size": 16}, "image_size"),
    ],
)
def test_bad_config(option, message):
    with pytest.raises(ConfigError, match=message):
        build_landmark_predictor(LandmarkPredictorConfig(**{**vars(SMALL), **option}))


def test_onnx_export_matches_with_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = perturbed()
    path = tmp_path / "predictor.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, 112, 112),),
            str(path),
            input_names=["images"],
            output_names=["landmarks"],
            dynamic_axes={"images": {0: "batch"}, "landmarks": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    images = torch.rand(3, 3, 112, 112) * 2 - 1
    (out,) = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(images).numpy(), atol=1e-3)
