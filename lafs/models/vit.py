"""Landmark-token ViT: timm's VisionTransformer whose tokens are patches sampled around facial landmarks.

Position embeddings are indexed by landmark id, never by token slot, so a view carrying any subset of the landmark
set (LAFS's local views carry 36 of 196, drawn with replacement) adds the embedding of the landmarks it actually
samples. The official LAFS code takes the first k embeddings instead; that is a known bug we do not reproduce.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch.utils.checkpoint import checkpoint

from lafs.landmarks import get_landmark_set
from lafs.models.token_geometry import LANDMARK_FITS, LandmarkFit, fit_landmarks, token_validity
from lafs.models.tokenizer import LandmarkPatchEmbed
from lafs.registry import ENCODERS

# timm options that would change the layout of the position table or the token sequence (patch dropout would drop
# tokens behind the attention mask's back).
_FIXED_LAYOUT = (
    "class_token",
    "no_embed_class",
    "reg_tokens",
    "pos_embed",
    "dynamic_img_size",
    "embed_layer",
    "patch_drop_rate",
)


class LandmarkViT(VisionTransformer):
    """ViT over landmark tokens. Inputs: images (batch, 3, H, W) normalised, landmarks (batch, K, 2) in pixels (the
    view's full set), optional ``landmark_ids`` (batch, k) choosing the tokens and ``valid`` (batch, K) data mask.

    ``forward_features`` returns tokens (batch, 1 + k, dim) with the CLS token first; ``forward`` returns the pooled
    embedding (batch, dim) (or logits if a classifier was attached). Without landmarks the template of the
    landmark set is used, which is right for faces aligned to the ArcFace template. ``landmark_fit`` says where
    tokens sample (`lafs.models.token_geometry`): ``none`` at the landmarks as given, ``minmax`` after the released
    LAFS per-image rescaling (``minmax_axes``: per axis). Tokens invalid in the data, or (with ``none``) centred off
    the image, are never attended to.
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
        landmark_fit: LandmarkFit = "none",
        **kwargs: Any,
    ) -> None:
        if landmark_fit not in LANDMARK_FITS:
            raise ValueError(f"landmark_fit must be one of {', '.join(LANDMARK_FITS)}, got {landmark_fit!r}")
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
        self.landmark_fit: LandmarkFit = landmark_fit
        self.num_landmarks = landmarks.num_landmarks
        height, width = to_2tuple(img_size)
        scale = torch.tensor([width, height], dtype=torch.float32) / landmarks.image_size
        template = torch.tensor(landmarks.template, dtype=torch.float32) * scale
        self.register_buffer("template", template, persistent=False)

    def default_landmarks(self, batch_size: int) -> torch.Tensor:
        """Template landmarks (batch, K, 2) for aligned faces."""
        return self.template.expand(batch_size, -1, -1)

    def embed_tokens(
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor | None = None,
        landmark_ids: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (batch, 1 + k, dim) before the blocks, CLS first, and which of them may be attended to.

        ``landmarks`` (batch, K, 2) are the view's full set (the template if None) and ``valid`` (batch, K) their data
        mask; the fit (``landmark_fit``) sees all K, then ``landmark_ids`` (batch, k) pick the tokens (all K if None).
        The mask is (batch, 1 + k) bool with CLS always true, or None when every token is valid by construction.
        """
        batch, size = images.shape[0], (images.shape[-2], images.shape[-1])
        on_template = landmarks is None
        if landmarks is None:
            landmarks = self.default_landmarks(batch)
        if landmarks.ndim != 3 or landmarks.shape[1:] != (self.num_landmarks, 2):
            raise ValueError(
                f"landmarks must be the full set (batch, {self.num_landmarks}, 2), got {tuple(landmarks.shape)}; "
                "pass landmark_ids (batch, k) for a subset"
            )
        if valid is not None and valid.shape != landmarks.shape[:2]:
            raise ValueError(f"valid {tuple(valid.shape)} must match landmarks {tuple(landmarks.shape[:2])}")
        if valid is not None:
            # A face with no valid point is one the detector missed: the template stands in for all of it, so every
            # token counts (as fine-tuning and evaluation use it), not none but CLS.
            valid = valid | ~valid.any(-1, keepdim=True)
        landmarks = fit_landmarks(landmarks, self.landmark_fit, size, valid)
        # The template lies inside the crop: no in-view test, so aligned faces keep the unmasked fast path.
        keys = valid if on_template else token_validity(landmarks, self.landmark_fit, size, valid)
        positions = self.pos_embed[0, 1:]
        if landmark_ids is None:
            positions = positions.expand(batch, -1, -1)
        else:
            if landmark_ids.ndim != 2 or landmark_ids.shape[0] != batch:
                raise ValueError(f"landmark_ids must be (batch, k) for {batch} images, got {tuple(landmark_ids.shape)}")
            landmarks = torch.gather(landmarks, 1, landmark_ids[..., None].expand(-1, -1, 2))
            keys = None if keys is None else torch.gather(keys, 1, landmark_ids)
            positions = positions[landmark_ids]
        tokens = self.patch_embed(images, landmarks) + positions
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1))
        if keys is not None:
            keys = F.pad(keys, (1, 0), value=True)  # CLS: every query attends to it, so no row is empty (no NaN)
        return self.norm_pre(tokens), keys

    def run_blocks(self, tokens: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        """The blocks over tokens (batch, n, dim); tokens false in ``keys`` (batch, n) are never attended to."""
        if keys is None:  # no attn_mask argument at all: attention keeps its fastest kernel
            if self.grad_checkpointing and not torch.jit.is_scripting():
                return checkpoint_seq(self.blocks, tokens)
            return self.blocks(tokens)
        attn_mask = keys[:, None, None, :]  # (batch, heads, queries, keys), broadcast over heads and queries
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                tokens = checkpoint(block, tokens, attn_mask=attn_mask, use_reentrant=False)
            else:
                tokens = block(tokens, attn_mask=attn_mask)
        return tokens

    # The overrides take landmarks where timm takes attn_mask / is_causal: a different input by design.
    def forward_features(  # type: ignore[override]
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor | None = None,
        landmark_ids: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised tokens (batch, 1 + k, dim) after the transformer blocks (inputs as for `embed_tokens`)."""
        return self.norm(self.run_blocks(*self.embed_tokens(images, landmarks, landmark_ids, valid)))

    def forward(  # type: ignore[override]
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor | None = None,
        landmark_ids: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled embedding (batch, dim), or logits (batch, classes) when a classifier is attached."""
        return self.forward_head(self.forward_features(images, landmarks, landmark_ids, valid))

    def forward_intermediates(  # type: ignore[override]
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor | None = None,
        landmark_ids: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        indices: int | list[int] | None = None,
        norm: bool = False,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Token sequences (batch, 1 + k, dim) after the chosen blocks (the last ``indices`` ones if an int)."""
        take, last = feature_take_indices(len(self.blocks), indices)
        tokens, keys = self.embed_tokens(images, landmarks, landmark_ids, valid)
        attn_mask = None if keys is None else keys[:, None, None, :]
        intermediates = []
        for i, block in enumerate(self.blocks[: last + 1]):
            tokens = block(tokens, attn_mask=attn_mask)
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
