"""Any timm model as an image-only encoder: ``encoder.name=timm:<model>``, its neck, the embedding split, errors."""

from __future__ import annotations

import pytest
import timm
import torch

from lafs.errors import ConfigError
from lafs.models import EncoderConfig, TimmEncoder, build_any_encoder, build_encoder, encoder_name, takes_landmarks
from lafs.models.timm_encoder import prefixed_matcher

BACKBONE = "test_convnext"  # timm's own tiny ConvNeXt (64-wide): a real ConvNeXt in a fraction of a second


@pytest.fixture(scope="module")
def encoder() -> TimmEncoder:
    torch.manual_seed(0)
    model = build_any_encoder(EncoderConfig(name=f"timm:{BACKBONE}", embed_dim=32))
    assert isinstance(model, TimmEncoder)
    return model.eval()


def test_one_key_builds_a_timm_backbone_with_an_embedding_neck(encoder):
    assert type(encoder.backbone).__name__ == "ConvNeXt" and encoder.backbone.num_classes == 0
    assert (encoder.bn.num_features, encoder.fc.in_features, encoder.fc.out_features) == (64, 64, 32)
    assert encoder.num_features == encoder.features.num_features == 32
    assert not encoder.features.weight.requires_grad  # IResNet's embedding layer: the BN's scale stays 1
    assert encoder.pretrained_cfg["architecture"] == "lafs_timm_encoder"
    assert encoder_name(encoder) == f"timm:{BACKBONE}" and not takes_landmarks(encoder)


def test_embedding_split_and_landmarks_are_ignored(encoder):
    images = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        embedding = encoder(images)
        pre = encoder.forward_pre_embedding(images)
        assert embedding.shape == (3, 32) and pre.shape == (3, 64)
        assert torch.equal(encoder.forward_embedding(pre), embedding)
        assert torch.equal(encoder.forward_head(encoder.forward_features(images), pre_logits=True), embedding)
        assert torch.equal(encoder(images, torch.rand(3, 49, 2) * 112), embedding)


def test_pre_logits_width_and_fixed_size_backbones():
    # MobileNetV3's classifier-free output is its 1024-wide pre-logits layer, not its 288 feature channels.
    mobilenet = build_any_encoder(EncoderConfig(name="timm:mobilenetv3_small_050", embed_dim=16))
    assert isinstance(mobilenet, TimmEncoder) and mobilenet.fc.in_features == 1024
    # A ViT's position table is sized for 112 x 112 (7 x 7 patches of 16), not its 224 default.
    vit = build_any_encoder(EncoderConfig(name="timm:test_vit", embed_dim=16)).eval()
    with torch.no_grad():
        assert vit(torch.randn(2, 3, 112, 112)).shape == (2, 16)


def test_drop_path_reaches_the_backbone():
    model = build_any_encoder(EncoderConfig(name=f"timm:{BACKBONE}", drop_path_rate=0.2))
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)


def test_group_matcher_is_the_backbone_s_under_its_prefix(encoder):
    matcher = {"stem": r"^conv1|^bn1", "blocks": [(r"^layer(\d+)\.(\d+)", None), (r"^norm", (99999,))]}
    assert prefixed_matcher(matcher, r"backbone\.") == {
        "stem": r"^backbone\.conv1|^backbone\.bn1",
        "blocks": [(r"^backbone\.layer(\d+)\.(\d+)", None), (r"^backbone\.norm", (99999,))],
    }
    groups = list(timm.models.group_parameters(encoder, encoder.group_matcher()).values())
    assert groups[0] == [
        "backbone.stem.0.weight",
        "backbone.stem.0.bias",
        "backbone.stem.1.weight",
        "backbone.stem.1.bias",
    ]
    assert {"bn.weight", "fc.weight", "fc.bias", "features.bias"} < set(groups[-1])  # the neck: the top layer


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm:convnext_att", "encoder.name=timm:convnext_att: timm has no model 'convnext_att' (did you mean "),
        ("timm:iresnet50", "encoder.name=timm:iresnet50: iresnet50 is a lafs encoder; use encoder.name=iresnet50"),
    ],
)
def test_bad_timm_names_are_one_line(name, message):
    with pytest.raises(ConfigError) as caught:
        build_any_encoder(EncoderConfig(name=name))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_config_names_and_stages_that_need_landmark_tokens():
    with pytest.raises(ConfigError, match=r"^encoder.name: unknown encoder 'iresnet9' \(known: iresnet100, "):
        EncoderConfig(name="iresnet9").validate()
    with pytest.raises(ConfigError, match=r"^encoder.embed_dim must be >= 1"):
        EncoderConfig(name="iresnet50", embed_dim=0).validate()
    with pytest.raises(ConfigError, match=r"^encoder.name=iresnet50 reads images only; this stage needs a landmark"):
        build_encoder(EncoderConfig(name="iresnet50"))
    # Only a landmark-token ViT must embed the data's landmark set.
    EncoderConfig(name="iresnet50", landmark_set="mediapipe196").require_landmark_set("mediapipe49")
    with pytest.raises(ConfigError, match=r"must equal data\.landmark_set"):
        EncoderConfig(landmark_set="mediapipe196").require_landmark_set("mediapipe49")


def test_builder_arguments_by_kind():
    vit = EncoderConfig(name="lafs_vit_nano_p8_112", landmark_set="mediapipe49", model_args={"depth": 2})
    expected = {"landmark_set": "mediapipe49", "landmark_fit": "none", "drop_path_rate": 0.0, "depth": 2}
    assert vit.builder_args() == expected
    resnet = EncoderConfig(name="iresnet18", embed_dim=128, model_args={"widths": [8, 8, 16, 16]})
    assert resnet.builder_args() == {"num_features": 128, "drop_path_rate": 0.0, "widths": [8, 8, 16, 16]}
    built = build_any_encoder(resnet)
    assert built.num_features == 128 and built.fc.in_features == 16 * 49
