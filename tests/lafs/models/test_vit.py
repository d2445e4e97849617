import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.errors import ConfigError
from lafs.landmarks import get_landmark_set
from lafs.models import EncoderConfig, LandmarkViT, build_encoder
from lafs.registry import ENCODERS
from tests.lafs.models.test_tokenizer import grid_centres

NAMES = ["lafs_vit_nano_p8_112", "lafs_vit_tiny_p8_112", "lafs_vit_small_p8_112", "lafs_vit_base_p8_112"]
SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny(**kwargs) -> LandmarkViT:
    torch.manual_seed(0)
    return timm.create_model("lafs_vit_nano_p8_112", **{**SMALL, "landmark_set": "mediapipe49", **kwargs}).eval()


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_size_builds_through_timm(name):
    assert name in timm.list_models("lafs_*") and name in ENCODERS
    model = timm.create_model(name, **SMALL)
    assert isinstance(model, LandmarkViT)
    assert model.pos_embed.shape == (1, 197, 32)
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 32)
    assert model.pretrained_cfg["input_size"] == (3, 112, 112)


def test_registered_widths():
    widths = {name: timm.create_model(name, depth=1).embed_dim for name in NAMES}
    assert list(widths.values()) == [128, 192, 384, 768]


def test_grid_landmarks_reproduce_a_plain_timm_vit():
    torch.manual_seed(0)
    reference = VisionTransformer(img_size=112, patch_size=8, num_classes=0, **SMALL).double().eval()
    model = timm.create_model("lafs_vit_nano_p8_112", **SMALL).double().eval()
    state = reference.state_dict()
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].flatten(1)
    model.load_state_dict(state)
    images = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    landmarks = grid_centres().double().expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images, landmarks), reference.forward_features(images))


def test_tokens_shape_and_pooled_embedding():
    model = tiny()
    images = torch.randn(3, 3, 112, 112)
    landmarks = model.default_landmarks(3)
    tokens = model.forward_features(images, landmarks)
    assert tokens.shape == (3, 1 + 49, 32)
    torch.testing.assert_close(model(images, landmarks), model.forward_head(tokens, pre_logits=True))


def test_image_only_call_uses_the_template():
    model = tiny()
    images = torch.randn(2, 3, 112, 112)
    template = torch.tensor(get_landmark_set("mediapipe49").template).expand(2, -1, -1)
    torch.testing.assert_close(model(images), model(images, template))


def test_subset_tokens_get_their_landmark_position():
    model = tiny()
    images = torch.randn(2, 3, 112, 112)
    landmarks = model.default_landmarks(2) + torch.randn(2, 49, 2)
    ids = torch.tensor([[3, 40, 3, 0], [48, 7, 21, 21]])  # with replacement, as LAFS local views draw them
    full = model.embed_tokens(images, landmarks)
    subset = model.embed_tokens(images, torch.gather(landmarks, 1, ids[..., None].expand(-1, -1, 2)), ids)
    torch.testing.assert_close(subset[:, 1:], torch.gather(full[:, 1:], 1, ids[..., None].expand(-1, -1, 32)))
    torch.testing.assert_close(subset[:, 0], full[:, 0])


def test_token_order_does_not_matter_when_ids_follow_the_landmarks():
    model = tiny()
    images = torch.randn(2, 3, 112, 112)
    landmarks = model.default_landmarks(2)
    order = torch.randperm(49).expand(2, -1)
    shuffled = model(images, landmarks[:, order[0]], order)
    torch.testing.assert_close(shuffled, model(images, landmarks), atol=1e-5, rtol=1e-5)


def test_landmark_count_must_match_the_set_without_ids():
    model = tiny()
    with pytest.raises(ValueError, match="pass landmark_ids"):
        model(torch.randn(1, 3, 112, 112), torch.zeros(1, 10, 2))
    with pytest.raises(ValueError, match="must match"):
        model(torch.randn(1, 3, 112, 112), torch.zeros(1, 10, 2), torch.zeros(1, 9, dtype=torch.long))


def test_layout_changing_options_are_refused():
    with pytest.raises(ValueError, match="reg_tokens"):
        timm.create_model("lafs_vit_nano_p8_112", reg_tokens=4)


def test_classifier_reset_and_pre_logits():
    model = tiny()
    model.reset_classifier(10)
    images = torch.randn(2, 3, 112, 112)
    assert model(images).shape == (2, 10)
    assert model.forward_head(model.forward_features(images), pre_logits=True).shape == (2, 32)


def test_forward_intermediates():
    model = tiny()
    final, intermediates = model.forward_intermediates(torch.randn(2, 3, 112, 112), indices=2)
    assert len(intermediates) == 2 and intermediates[-1].shape == (2, 50, 32)
    torch.testing.assert_close(model.norm(intermediates[-1]), final)


def test_stem_gets_layer_zero_and_no_weight_decay():
    model = tiny()
    groups = param_groups_layer_decay(
        model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.5
    )
    by_param = {id(p): g for g in groups for p in g["params"]}
    smallest = min(g["lr_scale"] for g in groups)
    for name in ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "cls_token"):
        group = by_param[id(model.get_parameter(name))]
        assert group["lr_scale"] == smallest and group["weight_decay"] == 0.0, name
    assert by_param[id(model.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05


def test_pretrained_file_round_trip(tmp_path):
    model = tiny()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = timm.create_model(
        "lafs_vit_nano_p8_112",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        **{**SMALL, "landmark_set": "mediapipe49"},
    ).eval()
    images = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(loaded(images), model(images))


def test_build_encoder_from_config():
    model = build_encoder(EncoderConfig(name="lafs_vit_nano_p8_112", landmark_set="mediapipe49"))
    assert model.num_landmarks == 49 and model.landmark_set == "mediapipe49"
    with pytest.raises(ConfigError, match="unknown encoder"):
        build_encoder(EncoderConfig(name="vit_base_patch16_224"))
