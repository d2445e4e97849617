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
from lafs.models.token_geometry import minmax_fit
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
    full, _ = model.embed_tokens(images, landmarks)
    subset, _ = model.embed_tokens(images, landmarks, ids)
    torch.testing.assert_close(subset[:, 1:], torch.gather(full[:, 1:], 1, ids[..., None].expand(-1, -1, 32)))
    torch.testing.assert_close(subset[:, 0], full[:, 0])


def test_subsets_gather_after_the_fit():
    """minmax fits the view's full set, then takes the ids: a subset's tokens are the full view's tokens at its ids,
    not those of a fit over the subset alone."""
    model = tiny(landmark_fit="minmax")
    images = torch.randn(2, 3, 112, 112)
    landmarks = model.default_landmarks(2) * 0.8 + 10.0 + torch.randn(2, 49, 2)
    ids = torch.tensor([[20, 21, 22, 20], [30, 31, 32, 33]])  # central points: their own min-max would differ
    full, _ = model.embed_tokens(images, landmarks)
    subset, _ = model.embed_tokens(images, landmarks, ids)
    torch.testing.assert_close(subset[:, 1:], torch.gather(full[:, 1:], 1, ids[..., None].expand(-1, -1, 32)))
    own_fit = minmax_fit(torch.gather(landmarks, 1, ids[..., None].expand(-1, -1, 2)), (112, 112))
    subset_alone = model.patch_embed(images, own_fit) + model.pos_embed[0, 1:][ids]
    assert not torch.allclose(subset[:, 1:], subset_alone, atol=1e-3)


def test_token_order_does_not_matter_when_ids_follow_the_landmarks():
    model = tiny()
    images = torch.randn(2, 3, 112, 112)
    landmarks = model.default_landmarks(2)
    order = torch.randperm(49).expand(2, -1)
    shuffled = model(images, landmarks, order)
    torch.testing.assert_close(shuffled, model(images, landmarks), atol=1e-5, rtol=1e-5)


def test_landmarks_must_be_the_full_set():
    model = tiny()
    with pytest.raises(ValueError, match="pass landmark_ids"):
        model(torch.randn(1, 3, 112, 112), torch.zeros(1, 10, 2))
    with pytest.raises(ValueError, match="landmark_ids must be"):
        model(torch.randn(1, 3, 112, 112), torch.zeros(1, 49, 2), torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="valid"):
        model(torch.randn(1, 3, 112, 112), torch.zeros(1, 49, 2), valid=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="landmark_fit must be one of none, minmax"):
        tiny(landmark_fit="maxmin")


def _corner_face(model: LandmarkViT) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (2, 3, 112, 112) and template landmarks whose token 5 samples the top-left 8 x 8 pixels alone (the
    template's other patches start at x >= 12, y >= 22)."""
    torch.manual_seed(1)
    landmarks = model.default_landmarks(2).clone()
    landmarks[:, 5] = torch.tensor([4.0, 4.0])
    return torch.randn(2, 3, 112, 112), landmarks


def test_an_invalid_token_changes_nothing():
    model = tiny()
    images, landmarks = _corner_face(model)
    valid = torch.ones(2, 49, dtype=torch.bool)
    valid[:, 5] = False
    other = images.clone()
    other[:, :, :8, :8] = torch.randn(2, 3, 8, 8)  # only token 5 sees these pixels
    moved = landmarks.clone()
    moved[:, 5] = torch.tensor([60.0, 70.0])  # and where it samples does not matter either
    with torch.no_grad():
        masked = model(images, landmarks, valid=valid)
        assert torch.equal(model(other, landmarks, valid=valid), masked)
        assert torch.equal(model(images, moved, valid=valid), masked)
        # Unmasked, the token is seen: the perturbation reaches the embedding.
        assert not torch.allclose(model(other, landmarks), model(images, landmarks))


def test_a_token_centred_off_the_view_is_masked():
    model = tiny()
    images, landmarks = _corner_face(model)
    off, further = landmarks.clone(), landmarks.clone()
    off[:, 5] = torch.tensor([-3.0, 4.0])  # its patch still reaches pixels 0..4, but its centre is off the view
    further[:, 5] = torch.tensor([4.0, 150.0])
    keys = model.embed_tokens(images, off)[1]
    assert keys is not None and keys.shape == (2, 50) and keys.sum().item() == 2 * 49 and not keys[:, 6].any()
    with torch.no_grad():
        assert torch.equal(model(images, further), model(images, off))
        assert not torch.allclose(model(images, landmarks), model(images, off))


def test_a_face_without_one_valid_point_uses_every_token():
    """A face the detector missed (no valid point: the template stands in) attends to every token, as in
    fine-tuning and evaluation; an image whose every token lies off the view attends to its CLS token only."""
    model = tiny()
    images, nothing = torch.randn(2, 3, 112, 112), torch.zeros(2, 49, dtype=torch.bool)
    with torch.no_grad():
        template = model.default_landmarks(2)
        torch.testing.assert_close(model(images, template, valid=nothing), model(images, template))
        away = model(images, template - 500.0)  # every centre off the view
        assert torch.isfinite(away).all()
        torch.testing.assert_close(away[0], away[1])  # nothing of the image reaches the CLS token


def test_no_mask_where_every_token_is_valid_by_construction():
    images = torch.randn(2, 3, 112, 112)
    landmarks = tiny().default_landmarks(2) + 200.0  # far off the view: a fit brings them back
    assert tiny().embed_tokens(images)[1] is None  # the template
    assert tiny(landmark_fit="minmax").embed_tokens(images, landmarks)[1] is None
    assert tiny().embed_tokens(images, landmarks)[1] is not None


def test_minmax_model_samples_the_fitted_points():
    model = tiny(landmark_fit="minmax")
    plain = tiny()
    images = torch.randn(2, 3, 112, 112)
    landmarks = model.default_landmarks(2) * 0.5 + 20.0
    # Tokens, not embeddings: the unfitted model would mask the fitted corner point at x = -0.5.
    with torch.no_grad():
        fitted = plain.embed_tokens(images, minmax_fit(landmarks, (112, 112)))[0]
        torch.testing.assert_close(model.embed_tokens(images, landmarks)[0], fitted)


def test_masked_blocks_with_gradient_checkpointing_and_intermediates():
    model = tiny()
    images, landmarks = _corner_face(model)
    landmarks[:, 7] = torch.tensor([-20.0, 30.0])
    expected = model.forward_features(images, landmarks)
    final, intermediates = model.forward_intermediates(images, landmarks, indices=1)
    torch.testing.assert_close(final, expected)
    torch.testing.assert_close(model.norm(intermediates[-1]), expected)
    model.set_grad_checkpointing(True)
    model.train()
    checkpointed = model.forward_features(images, landmarks)
    checkpointed.sum().backward()
    torch.testing.assert_close(checkpointed, expected)
    assert model.patch_embed.proj.weight.grad is not None


def test_layout_changing_options_are_refused():
    with pytest.raises(ValueError, match="reg_tokens"):
        timm.create_model("lafs_vit_nano_p8_112", reg_tokens=4)
    with pytest.raises(ValueError, match="patch_drop_rate"):
        timm.create_model("lafs_vit_nano_p8_112", patch_drop_rate=0.5)


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
    assert model.num_landmarks == 49 and model.landmark_set == "mediapipe49" and model.landmark_fit == "none"
    cfg = EncoderConfig(name="lafs_vit_nano_p8_112", landmark_set="mediapipe49", landmark_fit="minmax")
    assert build_encoder(cfg).landmark_fit == "minmax"
    with pytest.raises(ConfigError, match="unknown encoder"):
        build_encoder(EncoderConfig(name="vit_base_patch16_224"))
