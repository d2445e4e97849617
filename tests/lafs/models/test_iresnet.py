"""IResNet: arcface_torch's names and shapes, timm registration, the embedding split, precision and memory format."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import group_parameters

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.models.iresnet import IBasicBlock, IResNet
from lafs.registry import ENCODERS

TINY = {"widths": (8, 8, 16, 16)}  # the test-only width override: seconds on a CPU, every shape rule kept
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def arcface_torch_shapes(layers: tuple[int, ...], widths: tuple[int, ...] = (64, 128, 256, 512)) -> dict:
    """Name -> shape of arcface_torch's ``IResNet(IBasicBlock, layers)`` state dict, written out from its source
    (recognition/arcface_torch/backbones/iresnet.py): stem conv1/bn1/prelu, layerN.i.{bn1, conv1, bn2, prelu,
    conv2, bn3}, layerN.0.downsample.{0 conv, 1 BN}, bn2, fc (512 * 7 * 7 -> 512), features (BatchNorm1d)."""

    def bn(prefix: str, channels: int) -> dict:
        return {f"{prefix}.{key}": () if key == "num_batches_tracked" else (channels,) for key in BN}

    shapes = {"conv1.weight": (widths[0], 3, 3, 3), **bn("bn1", widths[0]), "prelu.weight": (widths[0],)}
    inplanes = widths[0]
    for stage, (depth, planes) in enumerate(zip(layers, widths, strict=True), start=1):
        for unit in range(depth):
            p, unit_in = f"layer{stage}.{unit}", inplanes if unit == 0 else planes
            shapes |= bn(f"{p}.bn1", unit_in) | {f"{p}.conv1.weight": (planes, unit_in, 3, 3)} | bn(f"{p}.bn2", planes)
            shapes |= {f"{p}.prelu.weight": (planes,), f"{p}.conv2.weight": (planes, planes, 3, 3)}
            shapes |= bn(f"{p}.bn3", planes)
        shapes |= {f"layer{stage}.0.downsample.0.weight": (planes, inplanes, 1, 1)} | bn(
            f"layer{stage}.0.downsample.1", planes
        )
        inplanes = planes
    shapes |= bn("bn2", widths[3]) | {"fc.weight": (512, widths[3] * 49), "fc.bias": (512,)} | bn("features", 512)
    return shapes


@pytest.mark.parametrize(
    ("name", "layers"),
    [("iresnet18", (2, 2, 2, 2)), ("iresnet50", (3, 4, 14, 3)), ("iresnet200", (6, 26, 60, 6))],
)
def test_an_arcface_torch_state_dict_loads_strictly(name, layers):
    model = timm.create_model(name, **TINY)
    expected = arcface_torch_shapes(layers, TINY["widths"])
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == expected
    generator = torch.Generator().manual_seed(0)
    backbone_pth = {  # what torch.load(backbone.pth) gives: float tensors, integer BN step counters
        key: torch.tensor(7) if key.endswith("num_batches_tracked") else torch.randn(shape, generator=generator)
        for key, shape in expected.items()
    }
    model.load_state_dict(backbone_pth, strict=True)
    assert torch.equal(model.fc.weight, backbone_pth["fc.weight"])
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict({k: v for k, v in backbone_pth.items() if k != "features.running_var"})


def test_full_width_parameter_counts_match_insightface():
    # insightface's model zoo: r18 24.0M, r34 34.1M, r50 43.6M, r100 65.2M parameters.
    counts = {name: sum(p.numel() for p in timm.create_model(name).parameters()) for name in ("iresnet18", "iresnet50")}
    assert round(counts["iresnet18"] / 1e6, 1) == 24.0 and round(counts["iresnet50"] / 1e6, 1) == 43.6
    assert arcface_torch_shapes((3, 13, 30, 3))["fc.weight"] == (512, 25088)


def test_registered_with_timm_and_the_encoder_registry():
    for name in ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"):
        assert timm.is_model(name) and name in ENCODERS
    cfg = timm.create_model("iresnet18", **TINY).pretrained_cfg
    assert cfg["input_size"] == (3, 112, 112) and cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bilinear" and cfg["architecture"] == "iresnet18"


def test_embedding_split_and_landmarks_are_ignored():
    torch.manual_seed(0)
    model = timm.create_model("iresnet18", **TINY).eval()
    images = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        embedding = model(images)
        assert embedding.shape == (3, 512) and model.num_features == 512
        assert model.forward_features(images).shape == (3, 16, 7, 7)
        pre = model.forward_pre_embedding(images)
        assert pre.shape == (3, 16 * 49)
        assert torch.equal(model.forward_embedding(pre), embedding)
        assert torch.equal(model.forward_head(model.forward_features(images), pre_logits=True), embedding)
        assert torch.equal(model(images, torch.rand(3, 49, 2) * 112), embedding)


def test_residual_unit_by_hand():
    # One channel, identity 3x3 kernels, fresh BNs in eval (x / sqrt(1 + eps)), PReLU's initial slope 0.25:
    # out = x + prelu(x) / (1 + eps)^1.5. For x = -2: -2 - 0.5 * 0.999985 = -2.4999925; for 3: 3 + 2.999955.
    unit = IBasicBlock(1, 1).eval()
    with torch.no_grad():
        for conv in (unit.conv1, unit.conv2):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
        out = unit(torch.tensor([-2.0, 3.0]).reshape(1, 1, 1, 2))
    torch.testing.assert_close(out.flatten(), torch.tensor([-2.4999925, 5.999955]), rtol=0, atol=1e-6)


def test_channels_last_gives_the_same_embedding():
    torch.manual_seed(0)
    model = timm.create_model("iresnet18", **TINY).eval()
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = model(images)
        model = model.to(memory_format=torch.channels_last)
        actual = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_fp16_runs_the_trunk_in_half_precision_and_the_fc_in_float32():
    torch.manual_seed(0)
    model = timm.create_model("iresnet18", fp16=True, **TINY).eval()
    reference = timm.create_model("iresnet18", **TINY).eval()
    reference.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert model.forward_features(images).dtype == torch.bfloat16  # CPU autocast's half type
        out = model(images)
        assert out.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(out, reference(images))
    assert cosine.min() > 0.99


def test_frozen_embedding_scale_and_trainable_rest():
    model = timm.create_model("iresnet18", **TINY)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["features.weight"] and torch.equal(model.features.weight, torch.ones(512))


def test_timm_classifier_and_group_matcher():
    model = timm.create_model("iresnet18", num_classes=5, **TINY)
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 5)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 512) and not list(model.get_classifier().parameters())
    groups = group_parameters(model, model.group_matcher())
    first = {name for names in list(groups.values())[:1] for name in names}
    assert first == {"conv1.weight", "bn1.weight", "bn1.bias", "prelu.weight"}
    assert len(groups) == 1 + 8  # the stem, then one group per residual unit (2 + 2 + 2 + 2)
    assert {"bn2.weight", "fc.weight", "features.bias"} < set(list(groups.values())[-1])  # timm: with the last unit


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="4 positive stage depths"):
        IResNet(layers=(2, 2, 2))


def test_other_input_sizes_size_the_fc():
    model = IResNet(layers=(1, 1, 1, 1), widths=(4, 4, 4, 4), img_size=(96, 113))
    assert model.fc.in_features == 4 * 6 * 8  # 96 -> 48 -> 24 -> 12 -> 6; 113 -> 57 -> 29 -> 15 -> 8
    assert model.eval()(torch.randn(1, 3, 96, 113)).shape == (1, 512)
