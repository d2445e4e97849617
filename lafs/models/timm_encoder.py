"""Any timm model as an image-only face encoder: ``encoder.name=timm:<model>`` (``timm:convnext_atto``, ...).

The timm model is built without a classifier (``num_classes=0``, so it returns its pooled features) and an
embedding neck follows: BatchNorm1d, dropout, a linear layer to ``num_features`` (512) and a BatchNorm1d with its
scale frozen at 1, the same embedding layer as IResNet's. CoReFace's dropout views act where IResNet's do: on what
enters the neck's dropout (the normalised pooled features).

The timm architecture name is ``lafs_timm_encoder`` (the backbone is a model argument), so an exported folder
rebuilds with ``timm.create_model("local-dir:<folder>", pretrained=True)`` after ``import lafs``.
"""

from __future__ import annotations

from typing import Any

import timm
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from lafs.errors import ConfigError
from lafs.models.image_only import ImageOnlyEncoder
from lafs.registry import ENCODERS

ARCHITECTURE = "lafs_timm_encoder"
PREFIX = "timm:"  # encoder.name=timm:<model>


class TimmEncoder(ImageOnlyEncoder):
    """timm ``backbone`` (pooled, batch x width) + neck -> embeddings (batch, num_features); landmarks ignored.

    ``backbone_args`` go to ``timm.create_model`` as they are; ``drop_path_rate`` only when > 0 (not every timm
    model takes it), and ``img_size`` only to models with a fixed input size (ViTs: their position table).
    """

    backbone: Any  # a timm model: forward_head, group_matcher, ... are timm's contract, not on nn.Module's type

    def __init__(
        self,
        backbone: str,
        num_features: int = 512,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        backbone_args: dict[str, Any] | None = None,
        img_size: int | tuple[int, int] = 112,
        in_chans: int = 3,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.backbone_name, self.backbone_args, self.img_size = backbone, dict(backbone_args or {}), to_2tuple(img_size)
        args = dict(self.backbone_args)
        if drop_path_rate > 0:
            args["drop_path_rate"] = drop_path_rate
        pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
        if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
            args.setdefault("img_size", self.img_size)
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **args)
        # What a classifier-free timm model returns: its pre-logits width (MobileNetV3's 1024), else num_features.
        width = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.num_features = num_features
        self.bn = nn.BatchNorm1d(width)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_features)
        self.features = nn.BatchNorm1d(num_features)
        self.features.weight.requires_grad_(False)  # as IResNet's (arcface_torch): only the shift trains
        self._make_head(num_classes)

    def rebuild_args(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone_name,
            "backbone_args": self.backbone_args,
            "num_features": self.num_features,
            "img_size": list(self.img_size),
        }

    def forward_features(self, images: Tensor) -> Tensor:
        """The backbone's unpooled features (timm's ``forward_features`` of the backbone)."""
        return self.backbone.forward_features(images)

    def forward_pre_embedding(self, images: Tensor) -> Tensor:
        """Normalised pooled features (batch, width): where the neck's dropout acts."""
        return self.bn(self.backbone(images))

    def forward_embedding(self, pre_embedding: Tensor) -> Tensor:
        """Dropout, linear and the embedding BN: (batch, width) -> (batch, num_features)."""
        return self.features(self.fc(self.dropout(pre_embedding)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """timm's head: unpooled features -> embedding (``pre_logits``) or classifier logits."""
        embedding = self.forward_embedding(self.bn(self.backbone.forward_head(x)))
        return embedding if pre_logits else self.head(embedding)

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{name}" for name in inner()} if callable(inner) else set()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # The backbone's own layer-decay groups; the neck matches none, so it trains at the full rate (the top).
        return prefixed_matcher(self.backbone.group_matcher(coarse), r"backbone\.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


def prefixed_matcher(matcher: dict[str, Any], prefix: str) -> dict[str, Any]:
    """timm's group matcher of a submodule (regexes anchored with ``^``) for the module holding it at ``prefix``."""

    def anchor(pattern: str) -> str:
        # Each alternative starts with ^ (timm's convention): re-anchor every one after the prefix.
        return "|".join(f"^{prefix}{part.removeprefix('^')}" for part in pattern.split("|"))

    return {
        group: anchor(rule) if isinstance(rule, str) else [(anchor(pattern), rank) for pattern, rank in rule]
        for group, rule in matcher.items()
    }


default_cfgs = generate_default_cfgs(
    {
        f"{ARCHITECTURE}.untrained": {
            "url": "",
            "num_classes": 0,
            "input_size": (3, 112, 112),
            "pool_size": None,
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "fixed_input_size": True,  # aligned 112 x 112 faces; also hands img_size to ViT backbones
            "mean": (0.5, 0.5, 0.5),  # the project's normalisation (pixels to [-1, 1]) for every encoder
            "std": (0.5, 0.5, 0.5),
            "first_conv": None,  # the backbone's; no channel adaptation of a stem we do not name
            "classifier": "head",
            "license": "apache-2.0",
        }
    }
)


@register_model
def lafs_timm_encoder(pretrained: bool = False, **kwargs: Any) -> TimmEncoder:
    """A timm model + embedding neck; ``backbone`` (a timm model name) is required."""
    return build_model_with_cfg(TimmEncoder, ARCHITECTURE, pretrained, **kwargs)


@ENCODERS.register(PREFIX)
def timm_encoder(backbone: str, **kwargs: Any) -> TimmEncoder:
    """``encoder.name=timm:<backbone>``: a one-line `ConfigError` for a name timm does not know."""
    if backbone in ENCODERS:
        raise ConfigError(f"encoder.name=timm:{backbone}: {backbone} is a lafs encoder; use encoder.name={backbone}")
    if not timm.is_model(backbone):
        close = timm.list_models(f"*{backbone}*")[:3]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"encoder.name=timm:{backbone}: timm has no model {backbone!r}{hint}")
    return lafs_timm_encoder(backbone=backbone, **kwargs)
