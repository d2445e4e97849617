"""What image-only encoders (IResNet, any timm model) share: a trunk, then an embedding layer, then timm's classifier.

Every encoder of the project is called ``encoder(images, landmarks=None)``; an image-only one ignores the landmarks,
so consumers keep one call signature. The split at the embedding layer is public because CoReFace makes its dropout
views there (on the flattened feature map before the FC, as its paper does for IResNet): ``forward_pre_embedding``
gives what enters the embedding layer and ``forward_embedding`` applies that layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ImageOnlyEncoder(nn.Module):
    """Normalised images (batch, 3, H, W) -> embeddings (batch, num_features); landmarks are ignored.

    Subclasses build ``self.head`` with `_make_head` and implement the two halves; ``forward`` chains them.
    ``num_classes`` is 0 for a face encoder (the margin head owns the class centres); a timm-style classifier on
    the embedding exists only for users who ask timm for one.
    """

    num_features: int  # the embedding size
    img_size: tuple[int, int]  # (height, width) the model was built for
    num_classes: int
    head: nn.Module
    pretrained_cfg: dict[str, Any]  # set by timm's build_model_with_cfg

    def forward_pre_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """What enters the embedding layer, flattened: (batch, F)."""
        raise NotImplementedError

    def forward_embedding(self, pre_embedding: torch.Tensor) -> torch.Tensor:
        """The embedding layer: (batch, F) -> embeddings (batch, num_features)."""
        raise NotImplementedError

    def rebuild_args(self) -> dict[str, Any]:
        """JSON-safe keyword arguments that, with the timm architecture name, rebuild this model's shapes."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (batch, num_features), or logits (batch, classes) when a classifier is attached."""
        return self.head(self.forward_embedding(self.forward_pre_embedding(images)))

    def _make_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay (timm's optimiser factory also skips biases and norms)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups (stem, then blocks) for layer-wise learning-rate decay."""
        raise NotImplementedError

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's contract: a new classifier of ``num_classes`` on the embedding (0: none)."""
        self._make_head(num_classes)
