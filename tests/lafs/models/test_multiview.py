"""MultiViewEncoder: every view's full landmark set and data mask reach the backbone, outputs view-major."""

from __future__ import annotations

import timm
import torch
from torch import nn

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.models.multiview import MultiViewEncoder, view_major

K = 49


def test_views_reach_the_backbone_with_their_masks():
    torch.manual_seed(0)
    backbone = timm.create_model(
        "lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=1, num_heads=2
    ).eval()
    model = MultiViewEncoder(backbone, nn.Identity())
    batch, num_local = 2, 3
    template = backbone.default_landmarks(1)[0]
    views = {
        "global_images": torch.randn(batch, 2, 3, 112, 112),
        "global_landmarks": template + torch.randn(batch, 2, K, 2),
        "global_valid": torch.rand(batch, 2, K) > 0.3,
        "local_images": torch.randn(batch, num_local, 3, 112, 112),
        "local_landmarks": template + torch.randn(batch, num_local, K, 2),
        "local_ids": torch.randint(0, K, (batch, num_local, 5)),
        "local_valid": torch.rand(batch, num_local, K) > 0.3,
    }
    with torch.no_grad():
        out = model(**views)
        globals_ = backbone(
            view_major(views["global_images"]),
            view_major(views["global_landmarks"]),
            valid=view_major(views["global_valid"]),
        )
        locals_ = backbone(
            view_major(views["local_images"]),
            view_major(views["local_landmarks"]),
            view_major(views["local_ids"]),
            valid=view_major(views["local_valid"]),
        )
        torch.testing.assert_close(out, torch.cat([globals_, locals_]))
        assert out.shape == ((2 + num_local) * batch, 32)
        unmasked = model(**{key: value for key, value in views.items() if not key.endswith("_valid")})
        assert not torch.allclose(out, unmasked)
