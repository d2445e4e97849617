"""Part fViT: the released LAFS encoder (szlbiubiubiu/LAFS_CVPR2024, ``ViT_face_landmark_patch8``), timm-registered.

    images (B, 3, 112, 112) RGB in [-1, 1], landmarks (B, 196, 2) pixels  ->  embedding (B, 768)

A `LandmarkViT` (so every consumer of the project's encoders takes it) with the released architecture, exact where
the weights or the outputs depend on it. Its landmarks come from the released landmark network
(`lafs.models.released_mobilenet.ReleasedLandmarkNet`), a separate landmark predictor: an imported model's folder
keeps it in ``landmark_predictor/``, so `lafs.export.load_any_encoder` returns ``ImageEncoder(encoder, network)``,
the released forward. Reproduced as released, quirks included:

- **BGR input.** Released weights were trained on BGR in [-1, 1]. The tokenizer flips the project's RGB to BGR
  itself (``channel_order: "bgr"`` in the config records what the weights expect; callers never flip).
- **Patch sampling** (``extract_patches_pytorch_gridsample``): an 8 x 8 patch at landmark ``(x, y)`` samples the
  continuous points ``(x + i, y + j)`` for ``i, j`` in ``-4 .. 3``, both divided by half the image *height*, with
  ``grid_sample(bilinear, zeros, align_corners=False)``. In the project's convention (pixel ``j`` spans
  ``[j, j + 1)``) that is a patch centred half a pixel up and left of the landmark. The token's 192 numbers are
  ordered (x offset, y offset, channel): the patch is transposed relative to a plain row-major patch. Token ``k`` is
  landmark ``k``.
- **Transformer**: 768 wide, 12 pre-norm blocks, 11 heads of 64 (704 inner dims), no qkv bias, attention scaled by
  ``dim ** -0.5`` (768, not the head width), MLP 2048 with exact GELU, LayerNorm eps 1e-5, dropout 0.1 after the
  attention output and in the MLP, dropout 0.1 on the embedded tokens, stochastic depth at the *same* rate in every
  block (not timm's linear ramp), CLS pooling, the final LayerNorm as the embedding.
- **Positions by slot** (``pos_embedding[:, :n + 1]``): with the full 196 tokens, slot = landmark id, which is what
  `LandmarkViT` does; a subset (pretraining's local views) takes its landmarks' rows, the project's contract.
- **Initialisation**: position table and CLS token ``randn`` (std 1), PyTorch's defaults elsewhere.

Without landmarks, tokens sit on the 14 x 14 grid ``(8c + 4.5, 8r + 4.5)``, row-major: with the released sampling
those are exactly the image's non-overlapping 8 x 8 patches (pixels in the released transposed order).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from lafs.models.tokenizer import LandmarkPatchEmbed
from lafs.models.vit import LandmarkViT, block_dims
from lafs.registry import ENCODERS

CHANNEL_ORDER = "bgr"  # what the released weights were trained on; the tokenizer flips RGB input itself
HEAD_DIM = 64  # the released Attention's dim_head default (never changed by its callers)
MLP_DIM = 2048  # the released mlp_dim
# Registered sizes' shape arguments, as `lafs.models.vit.SIZES` (lafs.export checks names against them).
SIZES: dict[str, dict[str, int]] = {"lafs_partfvit_b_p8_112": {"embed_dim": 768, "depth": 12, "num_heads": 11}}


def grid_landmarks(height: int, width: int, patch_size: int) -> torch.Tensor:
    """(rows * cols, 2) points whose released-convention patches tile the image, row-major: ``p c + p / 2 + 0.5``."""
    shift = patch_size / 2 + 0.5  # the released patch at x samples x - p/2 .. x + p/2 - 1: pixel centres from p c
    ys = torch.arange(0, height - patch_size + 1, patch_size, dtype=torch.float32) + shift
    xs = torch.arange(0, width - patch_size + 1, patch_size, dtype=torch.float32) + shift
    rows, cols = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([cols, rows], -1).reshape(-1, 2)


class ReleasedPatchEmbed(LandmarkPatchEmbed):
    """`LandmarkPatchEmbed` with the released sampling: BGR, offsets ``-p/2 .. p/2 - 1``, (x, y, channel) order."""

    def __init__(
        self,
        num_landmarks: int,
        img_size: int | tuple[int, int] = 112,
        patch_size: int | tuple[int, int] = 8,
        in_chans: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
        **_unused: object,
    ) -> None:
        super().__init__(num_landmarks, img_size, patch_size, in_chans, embed_dim, bias)
        patch = self.patch_size[0]
        steps = torch.arange(-patch / 2, patch / 2)  # released: arange(-p/2, p/2), so -4 .. 3 for p = 8
        offset_x, offset_y = torch.meshgrid(steps, steps, indexing="ij")  # sample q = i * p + j: x steps[i], y steps[j]
        self.offsets = torch.stack([offset_x, offset_y], -1).reshape(-1, 2)

    def sample_patches(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """Patches (batch, k, p * p * channels) at landmarks (batch, k, 2) of RGB images (batch, channels, H, W)."""
        images = images.flip(1)  # RGB -> BGR, what the released weights saw
        points = landmarks[:, :, None, :].to(images.dtype) + self.offsets.to(images.dtype)
        grid = points / (images.shape[2] * 0.5) - 1.0  # released: x and y both over half the height
        patches = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return rearrange(patches, "b c k q -> b k (q c)")


class ReleasedAttention(nn.Module):
    """Multi-head self-attention with ``heads * head_dim`` inner dims, no qkv bias, scores scaled by ``dim ** -0.5``.

    Names follow timm's `Attention` (``qkv``, ``proj``), whose fused path cannot take this scale.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.scale = dim**-0.5  # released: the model width, not the head width
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=False)
        self.proj = nn.Linear(num_heads * head_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, N, dim) -> (B, N, dim); ``attn_mask`` as `F.scaled_dot_product_attention` takes it."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, -1)))


class ReleasedBlock(nn.Module):
    """Pre-norm block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``, timm's names.

    Built by timm's `VisionTransformer` as ``block_fn``; its per-block options are fixed by the released model and
    ignored, except the projection dropout.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        head_dim: int,
        mlp_dim: int,
        stochastic_depth: float,
        proj_drop: float = 0.0,
        **_timm_options: Any,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ReleasedAttention(dim, num_heads, head_dim, proj_drop)
        self.drop_path1 = DropPath(stochastic_depth) if stochastic_depth > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(stochastic_depth) if stochastic_depth > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, N, dim) -> (B, N, dim), with timm `Block`'s call signature."""
        x = x + self.drop_path1(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PartFViT(LandmarkViT):
    """The released Part fViT (module docstring). Same inputs, outputs and methods as `LandmarkViT`."""

    def __init__(
        self,
        landmark_set: str = "mediapipe196",
        img_size: int | tuple[int, int] = 112,
        patch_size: int = 8,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 11,
        head_dim: int = HEAD_DIM,
        mlp_dim: int = MLP_DIM,
        drop_path_rate: float = 0.0,
        proj_drop_rate: float = 0.1,
        pos_drop_rate: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("landmark_fit", "none") != "none":  # its landmark network min-maxes; a second fit is off
            raise ValueError(f"Part fViT samples at its landmark network's points: landmark_fit must be none, got "
                             f"{kwargs['landmark_fit']!r}")  # fmt: skip
        block = partial(ReleasedBlock, head_dim=head_dim, mlp_dim=mlp_dim, stochastic_depth=drop_path_rate)
        super().__init__(
            landmark_set,
            img_size,
            patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            qkv_bias=False,
            block_fn=block,
            norm_layer=nn.LayerNorm,
            proj_drop_rate=proj_drop_rate,
            pos_drop_rate=pos_drop_rate,
            drop_path_rate=0.0,  # the blocks hold the released constant rate
            **kwargs,
        )
        height, width = to_2tuple(img_size)
        grid = grid_landmarks(height, width, patch_size)
        if len(grid) != self.num_landmarks:
            raise ValueError(
                f"Part fViT has one position per {patch_size} x {patch_size} patch of a {width} x {height} image "
                f"({len(grid)}); landmark set {landmark_set} has {self.num_landmarks} points"
            )
        self.patch_embed = ReleasedPatchEmbed(self.num_landmarks, img_size, patch_size, embed_dim=embed_dim)
        self.template = grid
        self.head_dim, self.mlp_dim = head_dim, mlp_dim

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """The released initialisation: ``randn`` position table and CLS token, PyTorch's defaults elsewhere."""
        nn.init.normal_(self.pos_embed)
        nn.init.normal_(self.cls_token)
        if needs_reset:
            for module in self.modules():
                if module is not self and isinstance(module, (nn.Linear, nn.LayerNorm)):
                    module.reset_parameters()

    def model_args(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model's shapes with `timm.create_model` (its config record)."""
        return {
            "landmark_set": self.landmark_set,
            "embed_dim": self.embed_dim,
            "depth": len(self.blocks),
            "num_heads": block_dims(self)[0],
            "head_dim": self.head_dim,
            "mlp_dim": self.mlp_dim,
        }


default_cfgs = generate_default_cfgs(
    {
        "lafs_partfvit_b_p8_112.untrained": {
            "url": "",
            "num_classes": 0,
            "input_size": (3, 112, 112),
            "pool_size": None,
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "fixed_input_size": True,
            "mean": (0.5, 0.5, 0.5),  # [-1, 1], as released
            "std": (0.5, 0.5, 0.5),
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "mit",  # the released code's licence
            "notes": ("channel_order bgr: released weights expect BGR; the model flips RGB input itself",),
        }
    }
)


@ENCODERS.register()
@register_model
def lafs_partfvit_b_p8_112(pretrained: bool = False, **kwargs: Any) -> PartFViT:
    """The released Part fViT: 768 wide, 12 blocks, 11 heads of 64, MLP 2048, over 196 landmark tokens."""
    model = build_model_with_cfg(
        PartFViT,
        "lafs_partfvit_b_p8_112",
        pretrained,
        feature_cfg={"out_indices": 3, "feature_cls": "getter"},
        **{**SIZES["lafs_partfvit_b_p8_112"], **kwargs},
    )
    model.pretrained_cfg["channel_order"] = CHANNEL_ORDER
    return model
