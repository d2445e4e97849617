"""Landmark tokenizer: one token per landmark, from a p x p patch bilinearly sampled around it.

Landmarks follow the project contract: ``(x, y)`` pixels of the input image, pixel ``j`` spans ``[j, j + 1)``.
With ``align_corners=False``, grid_sample puts pixel ``j``'s centre (``j + 0.5``) at ``(2j + 1) / W - 1``, so the
pixel coordinate ``x`` maps to ``2x / W - 1`` with no half-pixel fix-up. A landmark on the centre of a regular
patch (``8c + 4`` for p = 8) samples exactly that patch's pixels, which is why the projection can share weights
with timm's ``PatchEmbed`` (pinned by a test).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class LandmarkPatchEmbed(nn.Module):
    """Samples a p x p patch at each landmark and projects it to ``embed_dim``.

    Accepts timm's ``embed_layer`` keyword arguments, so `VisionTransformer` can build it; ``num_patches`` is the
    number of landmarks in the set (the length of the position table).
    """

    offsets: torch.Tensor  # the buffer registered in __init__ (nn.Module.__getattr__ would type it Tensor | Module)

    def __init__(
        self,
        num_landmarks: int,
        img_size: int | tuple[int, int] = 112,
        patch_size: int | tuple[int, int] = 8,
        in_chans: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
        **_unused: object,  # timm passes options for grid patch embeddings (padding, output format) that do not apply
    ) -> None:
        super().__init__()
        patch = patch_size if isinstance(patch_size, int) else patch_size[0]
        if not isinstance(patch_size, int) and patch_size[0] != patch_size[1]:
            raise ValueError(f"landmark patches are square, got patch_size={patch_size}")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = (patch, patch)
        self.num_patches = num_landmarks
        self.in_chans = in_chans
        self.proj = nn.Linear(in_chans * patch * patch, embed_dim, bias=bias)
        # Sample offsets from the landmark to each pixel centre of the patch, row-major (y, then x).
        steps = torch.arange(patch, dtype=torch.float32) - (patch - 1) / 2
        offset_y, offset_x = torch.meshgrid(steps, steps, indexing="ij")
        self.register_buffer("offsets", torch.stack([offset_x, offset_y], -1).reshape(-1, 2), persistent=False)

    def sample_patches(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """Patches (batch, k, channels * p * p) at landmarks (batch, k, 2) of images (batch, channels, H, W)."""
        height, width = images.shape[-2:]
        points = landmarks[:, :, None, :].to(images.dtype) + self.offsets.to(images.dtype)
        scale = points.new_tensor([2.0 / width, 2.0 / height])
        grid = points * scale - 1.0
        patches = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # (c, y, x) order per token matches a Conv2d patch weight flattened with .flatten(1).
        return rearrange(patches, "b c k q -> b k (c q)")

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """Tokens (batch, k, embed_dim) for landmarks (batch, k, 2)."""
        if landmarks.ndim != 3 or landmarks.shape[-1] != 2 or landmarks.shape[0] != images.shape[0]:
            raise ValueError(
                f"landmarks must be (batch, k, 2) for {images.shape[0]} images, got {tuple(landmarks.shape)}"
            )
        return self.proj(self.sample_patches(images, landmarks))
