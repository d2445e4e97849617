"""FinetuneModel with every kind of encoder: where embedding views come from, layer-decay groups, SGD."""

from __future__ import annotations

import pytest
import torch

from finetune.heads import MarginHead
from finetune.model import FinetuneModel
from finetune.objective import build_objective
from finetune.regularisers import RegularisersConfig
from finetune.regularisers.coreface import CoReFaceConfig
from finetune.task import FinetuneOptimConfig, build_optimizer
from lafs.models import EncoderConfig, build_any_encoder
from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor
from lafs.schedules import WeightSchedule

ENCODERS = {
    "iresnet": EncoderConfig(name="iresnet18", embed_dim=16, model_args={"widths": [4, 4, 8, 8]}),
    "timm": EncoderConfig(name="timm:test_convnext", embed_dim=16),
    "vit": EncoderConfig(name="lafs_vit_nano_p8_112", landmark_set="mediapipe49", model_args={"depth": 2}),
}


def model_with(encoder_cfg: EncoderConfig, regularisers: RegularisersConfig | None = None, **kwargs) -> FinetuneModel:
    torch.manual_seed(0)
    encoder = build_any_encoder(encoder_cfg)
    dim = encoder.num_features
    objective = build_objective(
        MarginHead(4, dim), regularisers or RegularisersConfig(), num_classes=4, embed_dim=dim, num_samples=8
    )
    return FinetuneModel(encoder, objective, **kwargs)


@pytest.mark.parametrize("kind", ["iresnet", "timm"])
def test_image_only_encoders_hand_the_objective_their_embedding_layer(kind):
    model = model_with(ENCODERS[kind]).eval()
    images = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        features, landmarks, source = model.embed(images, torch.zeros(3, 49, 2))
        assert landmarks is None and source is not None
        expected_width = 8 * 49 if kind == "iresnet" else 64  # IResNet: the flattened 7 x 7 map; ConvNeXt: pooled
        assert source.inputs.shape == (3, expected_width) and source.inputs.dtype == torch.float32
        assert torch.equal(source.embed(source.inputs), features) and features.shape == (3, 16)
        assert torch.equal(features, model.encoder(images))


def test_the_landmark_vit_keeps_its_views_on_the_pooled_embedding():
    model = model_with(ENCODERS["vit"]).eval()
    images, landmarks = torch.randn(2, 3, 112, 112), torch.rand(2, 49, 2) * 112
    with torch.no_grad():
        features, used, source = model.embed(images, landmarks)
    assert source is None and used is landmarks and torch.equal(features, model.encoder(images, landmarks))


def test_coreface_views_go_through_the_iresnet_fc(monkeypatch):
    coreface = CoReFaceConfig(enabled=True, phase2_epoch=0.0, weight=WeightSchedule(kind="constant", value=0.05))
    model = model_with(ENCODERS["iresnet"], RegularisersConfig(coreface=coreface)).train()
    seen = []
    embed = model.encoder.forward_embedding

    def spy(pre_embedding: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(pre_embedding.shape))
        return embed(pre_embedding)

    monkeypatch.setattr(model.encoder, "forward_embedding", spy)
    terms = model(torch.randn(4, 3, 112, 112), torch.tensor([0, 1, 2, 3]), epoch=0.5)
    assert seen == [(4, 8 * 49)] * 3  # the clean embedding, then one FC + BN pass per dropout view
    assert terms["coreface_loss"] > 0
    terms["loss"].backward()
    assert model.encoder.layer1[0].conv1.weight.grad is not None


def test_layer_decay_groups_follow_each_encoder():
    model = model_with(ENCODERS["iresnet"])
    optimizer = build_optimizer(model, FinetuneOptimConfig(layer_decay=0.5, weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    # stem, 8 residual units (the last one with bn2 / fc / features), then the head at the full rate
    assert scale["encoder.conv1.weight"] == pytest.approx(0.5**9)
    assert scale["encoder.layer1.0.conv1.weight"] == pytest.approx(0.5**8)
    assert scale["encoder.layer4.1.conv2.weight"] == scale["encoder.fc.weight"] == pytest.approx(0.5)
    assert scale["objective.head.weight"] == 1.0
    assert "encoder.features.weight" not in scale  # frozen at 1, as arcface_torch
    vit = model_with(ENCODERS["vit"], landmark_predictor=predictor())
    assert vit.group_matcher() == {
        "stem": r"^encoder\.cls_token|^encoder\.pos_embed|^encoder\.patch_embed|^landmark_predictor\.",
        "blocks": [(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))],
    }


def predictor():
    return build_landmark_predictor(
        LandmarkPredictorConfig(backbone="mobilenetv3_small_050", landmark_set="mediapipe49")
    )


def test_sgd_is_arcface_torch_s_momentum_sgd():
    model = model_with(ENCODERS["iresnet"])
    optimizer = build_optimizer(model, FinetuneOptimConfig(name="sgd", lr=0.1, weight_decay=5e-4, layer_decay=1.0))
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and group["nesterov"] is False and group["lr"] == 0.1
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 5e-4}  # biases and norms: none (timm)
    assert type(build_optimizer(model, FinetuneOptimConfig())) is torch.optim.AdamW
