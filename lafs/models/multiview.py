"""Encoder + projection head over several views at once, one forward pass per token count."""

from __future__ import annotations

import torch
from torch import nn

from lafs.models.vit import LandmarkViT


def view_major(views: torch.Tensor) -> torch.Tensor:
    """(batch, views, ...) -> (views * batch, ...): all of view 0's batch first, as multi-view losses expect."""
    return views.transpose(0, 1).reshape(-1, *views.shape[2:])


def _view_major_or_none(views: torch.Tensor | None) -> torch.Tensor | None:
    return None if views is None else view_major(views)


class MultiViewEncoder(nn.Module):
    """``head(backbone(view))`` for global views (all K landmarks) and, optionally, local views (k landmark ids).

    Views with the same token count share one forward pass (DINO's multi-crop grouping). Output rows are view-major:
    the globals (2 * batch), then the locals (num_local * batch).
    """

    def __init__(self, backbone: LandmarkViT, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(
        self,
        global_images: torch.Tensor,
        global_landmarks: torch.Tensor,
        local_images: torch.Tensor | None = None,
        local_landmarks: torch.Tensor | None = None,
        local_ids: torch.Tensor | None = None,
        global_valid: torch.Tensor | None = None,
        local_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images (batch, views, 3, H, W) normalised; every view's full landmark set (batch, views, K, 2) and its
        optional data mask (batch, views, K); the local views' token ids (batch, views, k)."""
        globals_ = (view_major(global_images), view_major(global_landmarks))
        features = [self.backbone(*globals_, valid=_view_major_or_none(global_valid))]
        if local_images is not None and local_images.shape[1] > 0:
            if local_landmarks is None or local_ids is None:
                raise ValueError("local views need local_landmarks and local_ids")
            locals_ = (view_major(local_images), view_major(local_landmarks), view_major(local_ids))
            features.append(self.backbone(*locals_, valid=_view_major_or_none(local_valid)))
        return self.head(torch.cat(features))
