"""Part fViT: the released sampling convention, BGR input, attention scale, block layout, grid, folder round trip."""

import json

import pytest
import timm
import torch
from einops import rearrange

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.export import load_encoder, save_encoder
from lafs.models import PartFViT
from lafs.models.partfvit import ReleasedAttention, ReleasedPatchEmbed, grid_landmarks
from lafs.registry import ENCODERS

SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 2, "head_dim": 16, "mlp_dim": 96}


def small(**kwargs) -> PartFViT:
    torch.manual_seed(0)
    return timm.create_model("lafs_partfvit_b_p8_112", **{**SMALL, **kwargs}).eval()


def test_sampling_convention_pinned_on_ramps():
    embed = ReleasedPatchEmbed(196)
    ramp = torch.arange(112, dtype=torch.float32)
    # BGR after the flip: blue (RGB channel 2) ramps along x, green along y, red is constant.
    rgb = torch.stack([torch.full((112, 112), 7.0), ramp[:, None].expand(112, 112), ramp.expand(112, 112)])[None]
    patch = embed.sample_patches(rgb, torch.tensor([[[10.0, 20.0]]]))[0, 0].reshape(8, 8, 3)  # (x step, y step, c)
    # Sample x = 10 + i - 4 in pixel units whose centres sit at j + 0.5: the ramp (value j at centre j + 0.5) reads
    # x - 0.5, so 5.5 .. 12.5 along the first patch axis; y likewise 15.5 .. 22.5 along the second.
    steps = torch.arange(8, dtype=torch.float32)
    torch.testing.assert_close(patch[:, :, 0], (5.5 + steps)[:, None].expand(8, 8))  # blue: x, over rows
    torch.testing.assert_close(patch[:, :, 1], (15.5 + steps)[None, :].expand(8, 8))  # green: y, over columns
    torch.testing.assert_close(patch[:, :, 2], torch.full((8, 8), 7.0))  # red last


def test_grid_landmarks_reproduce_plain_patches():
    grid = grid_landmarks(112, 112, 8)
    assert grid.shape == (196, 2) and grid[0].tolist() == [4.5, 4.5] and grid[1].tolist() == [12.5, 4.5]
    assert grid[14].tolist() == [4.5, 12.5]  # row-major: token 14 starts the second row
    rgb = torch.rand(2, 3, 112, 112)
    tokens = ReleasedPatchEmbed(196).sample_patches(rgb, grid.expand(2, -1, -1))
    plain = rearrange(rgb.flip(1), "b c (h y) (w x) -> b (h w) (x y c)", y=8, x=8)  # BGR, x-major within a patch
    torch.testing.assert_close(tokens, plain, rtol=0, atol=1e-5)  # grid coordinates carry float rounding
    model = small()
    with torch.no_grad():  # an image-only call is the grid
        torch.testing.assert_close(model(rgb), model(rgb, grid.expand(2, -1, -1)), rtol=0, atol=0)


def test_attention_scales_by_the_model_width():
    torch.manual_seed(0)
    attention = ReleasedAttention(dim=12, num_heads=2, head_dim=4).eval()
    x = torch.randn(3, 5, 12)
    q, k, v = attention.qkv(x).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2) for t in (q, k, v))

    def expected(scale: float) -> torch.Tensor:
        weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
        return attention.proj((weights @ v).transpose(1, 2).flatten(2))

    with torch.no_grad():
        out = attention(x)
        torch.testing.assert_close(out, expected(12**-0.5))
        assert not torch.allclose(out, expected(4**-0.5))  # the usual head-width scale gives something else
    assert attention.qkv.bias is None and attention.qkv.out_features == 24


def test_released_layout_of_the_registered_size():
    model = timm.create_model("lafs_partfvit_b_p8_112", depth=2, drop_path_rate=0.1)
    assert ENCODERS.get("lafs_partfvit_b_p8_112") is not None
    block = model.blocks[0]
    assert (model.embed_dim, block.attn.num_heads, block.attn.head_dim) == (768, 11, 64)
    assert tuple(block.attn.qkv.weight.shape) == (3 * 704, 768) and block.attn.qkv.bias is None
    assert tuple(block.mlp.fc1.weight.shape) == (2048, 768) and isinstance(block.mlp.act, torch.nn.GELU)
    assert block.mlp.act.approximate == "none" and block.norm1.eps == 1e-5 and model.norm.eps == 1e-5
    assert [b.drop_path1.drop_prob for b in model.blocks] == [0.1, 0.1]  # constant, not a ramp from 0
    assert block.attn.proj_drop.p == block.mlp.drop1.p == block.mlp.drop2.p == model.pos_drop.p == 0.1
    assert tuple(model.pos_embed.shape) == (1, 197, 768) and tuple(model.patch_embed.proj.weight.shape) == (768, 192)
    assert model.pos_embed.std() > 0.9 and model.cls_token.std() > 0.5  # randn, not timm's 0.02 / 1e-6
    assert model.pretrained_cfg["channel_order"] == "bgr"
    with pytest.raises(ValueError, match="one position per 8 x 8 patch"):
        timm.create_model("lafs_partfvit_b_p8_112", landmark_set="mediapipe49", **SMALL)


def test_cls_pooling_of_the_final_norm():
    model = small()
    images, landmarks = torch.rand(2, 3, 112, 112) * 2 - 1, torch.rand(2, 196, 2) * 111
    with torch.no_grad():
        tokens = model.forward_features(images, landmarks)
        torch.testing.assert_close(model(images, landmarks), tokens[:, 0])


def test_folder_round_trip_records_the_released_shapes(tmp_path):
    model = small()
    save_encoder(model, tmp_path / "encoder")
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert config["architecture"] == "lafs_partfvit_b_p8_112" and config["channel_order"] == "bgr"
    assert config["model_args"] == {"landmark_set": "mediapipe196", **SMALL}
    loaded = load_encoder(tmp_path / "encoder").eval()
    assert isinstance(loaded, PartFViT)
    images, landmarks = torch.rand(2, 3, 112, 112) * 2 - 1, torch.rand(2, 196, 2) * 111
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, landmarks), model(images, landmarks), rtol=0, atol=0)
