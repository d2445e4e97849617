"""Landmark-token ViT: timm's VisionTransformer whose tokens are patches sampled around facial landmarks.

Position embeddings are indexed by landmark id, never by token slot, so a view carrying any subset of the landmark
set (LAFS's local views carry 36 of 196, drawn with replacement) adds the embedding of the landmarks it actually
samples. The official LAFS code takes the first k embeddings instead; that is a known bug we do not reproduce.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer

from lafs.landmarks import get_landmark_set
from lafs.models.tokenizer import LandmarkPatchEmbed
from lafs.registry import ENCODERS

# timm options that would change the layout of the position table or the token sequence.
_FIXED_LAYOUT = ("class_token", "no_embed_class", "reg_tokens", "pos_embed", "dynamic_img_size", "embed_layer")


class LandmarkViT(VisionTransformer):
    """ViT over landmark tokens. Inputs: images (batch, 3, H, W) normalised, landmarks (batch, k, 2) in pixels.

    ``forward_features`` returns tokens (batch, 1 + k, dim) with the CLS token first; ``forward`` returns the pooled
    embedding (batch, dim) (or logits if a classifier was attached). Without landmarks the template of the
    landmark set is used, which is right for faces aligned to the ArcFace template.
    """

    # Narrower than VisionTransformer's Optional: the class token and the position table are always on
    # (_FIXED_LAYOUT keeps the options that would drop them out).
    cls_token: torch.nn.Parameter
    pos_embed: torch.nn.Parameter
    template: torch.Tensor  # the buffer registered in __init__ (nn.Module.__getattr__ would type it Tensor | Module)
    pretrained_cfg: dict[str, Any]  # set by timm's build_model_with_cfg

    def __init__(
        self,
        landmark_set: str = "mediapipe196",
        img_size: int | tuple[int, int] = 112,
        patch_size: int = 8,
        **kwargs: Any,
    ) -> None:
        clashing = sorted(set(kwargs) & set(_FIXED_LAYOUT))
        if clashing:
            raise ValueError(f"LandmarkViT fixes the token layout; remove {', '.join(clashing)}")
        landmarks = get_landmark_set(landmark_set)
        kwargs.setdefault("num_classes", 0)
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_layer=partial(LandmarkPatchEmbed, num_landmarks=landmarks.num_landmarks),
            class_token=True,
            **kwargs,
        )
        self.landmark_set = landmark_set
        self.num_landmarks = landmarks.num_landmarks
        height, width = to_2tuple(img_size)
        scale = torch.tensor([width, height], dtype=torch.float32) / landmarks.image_size
        template = torch.tensor(landmarks.template, dtype=torch.float32) * scale
        self.register_buffer("template", template, persistent=False)

    def default_landmarks(self, batch_size: int, landmark_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Template landmarks (batch, K or k, 2) for aligned faces."""
        if landmark_ids is None:
            return self.template.expand(batch_size, -1, -1)
        return self.template[landmark_ids]

    def embed_tokens(
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None, landmark_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token sequence (batch, 1 + k, dim) before the blocks: CLS, then one token per landmark, with positions."""
        batch = images.shape[0]
        if landmarks is None:
            landmarks = self.default_landmarks(batch, landmark_ids)
        landmark_pos = self.pos_embed[0, 1:]
        if landmark_ids is None:
            if landmarks.shape[1] != self.num_landmarks:
                raise ValueError(
                    f"{landmarks.shape[1]} landmarks given for a {self.num_landmarks}-point set; "
                    "pass landmark_ids (batch, k) for a subset"
                )
            positions = landmark_pos.expand(batch, -1, -1)
        else:
            if landmark_ids.shape != landmarks.shape[:2]:
                raise ValueError(
                    f"landmark_ids {tuple(landmark_ids.shape)} must match landmarks {tuple(landmarks.shape[:2])}"
                )
            positions = landmark_pos[landmark_ids]
        tokens = self.patch_embed(images, landmarks) + positions
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1))
        return self.norm_pre(self.patch_drop(tokens))

    # The overrides take landmarks where timm takes attn_mask / is_causal: a different input by design.
    def forward_features(  # type: ignore[override]
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None, landmark_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised tokens (batch, 1 + k, dim) after the transformer blocks."""
        tokens = self.embed_tokens(images, landmarks, landmark_ids)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            tokens = checkpoint_seq(self.blocks, tokens)
        else:
            tokens = self.blocks(tokens)
        return self.norm(tokens)

    def forward(  # type: ignore[override]
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None, landmark_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled embedding (batch, dim), or logits (batch, classes) when a classifier is attached."""
        return self.forward_head(self.forward_features(images, landmarks, landmark_ids))

    def forward_intermediates(  # type: ignore[override]
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor | None = None,
        landmark_ids: torch.Tensor | None = None,
        indices: int | list[int] | None = None,
        norm: bool = False,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Token sequences (batch, 1 + k, dim) after the chosen blocks (the last ``indices`` ones if an int)."""
        take, last = feature_take_indices(len(self.blocks), indices)
        tokens = self.embed_tokens(images, landmarks, landmark_ids)
        intermediates = []
        for i, block in enumerate(self.blocks[: last + 1]):
            tokens = block(tokens)
            if i in take:
                intermediates.append(self.norm(tokens) if norm else tokens)
        if intermediates_only:
            return intermediates
        return self.norm(tokens), intermediates

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The landmark projection and the landmark position table are the stem: no decay, as in LAFS.
        return {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # Layer 0 for the stem, so layer-wise LR decay gives the tokenizer the smallest scale, not the head's.
        return {
            "stem": r"^cls_token|^pos_embed|^patch_embed",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }


def block_dims(model: VisionTransformer) -> tuple[int, int]:
    """(attention heads, MLP hidden width) of ``model``'s first block: timm keeps neither on the model itself."""
    # A timm Block; its .attn and .mlp come from layer factories, typed as plain nn.Module, so no precise type.
    block: Any = model.blocks[0]
    return int(block.attn.num_heads), int(block.mlp.fc1.out_features)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 112, 112),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        # LAFS and insightface scale pixels to [-1, 1].
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "lafs_vit_nano_p8_112.untrained": _cfg(),
        "lafs_vit_tiny_p8_112.untrained": _cfg(),
        "lafs_vit_small_p8_112.untrained": _cfg(),
        "lafs_vit_base_p8_112.untrained": _cfg(),
    }
)


# The registered sizes' shape arguments; model_args may change them (a custom size keeps its family's name).
SIZES: dict[str, dict[str, int]] = {
    "lafs_vit_nano_p8_112": {"embed_dim": 128, "depth": 4, "num_heads": 4},
    "lafs_vit_tiny_p8_112": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "lafs_vit_small_p8_112": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "lafs_vit_base_p8_112": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> LandmarkViT:
    return build_model_with_cfg(
        LandmarkViT,
        variant,
        pretrained,
        feature_cfg={"out_indices": 3, "feature_cls": "getter"},
        **kwargs,
    )


@ENCODERS.register()
@register_model
def lafs_vit_nano_p8_112(pretrained: bool = False, **kwargs: Any) -> LandmarkViT:
    """128-wide, 4 blocks: for tests and the CPU demo."""
    return _create("lafs_vit_nano_p8_112", pretrained, **{**SIZES["lafs_vit_nano_p8_112"], **kwargs})


@ENCODERS.register()
@register_model
def lafs_vit_tiny_p8_112(pretrained: bool = False, **kwargs: Any) -> LandmarkViT:
    """ViT-Ti shape: 192 wide, 12 blocks, 3 heads."""
    return _create("lafs_vit_tiny_p8_112", pretrained, **{**SIZES["lafs_vit_tiny_p8_112"], **kwargs})


@ENCODERS.register()
@register_model
def lafs_vit_small_p8_112(pretrained: bool = False, **kwargs: Any) -> LandmarkViT:
    """ViT-S shape: 384 wide, 12 blocks, 6 heads."""
    return _create("lafs_vit_small_p8_112", pretrained, **{**SIZES["lafs_vit_small_p8_112"], **kwargs})


@ENCODERS.register()
@register_model
def lafs_vit_base_p8_112(pretrained: bool = False, **kwargs: Any) -> LandmarkViT:
    """ViT-B shape: 768 wide, 12 blocks, 12 heads (LAFS's paper scale)."""
    return _create("lafs_vit_base_p8_112", pretrained, **{**SIZES["lafs_vit_base_p8_112"], **kwargs})
