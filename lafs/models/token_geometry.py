"""Where landmark tokens sample, and which of them the encoder may attend to.

Coordinates follow the project contract: pixel ``j`` spans ``[j, j + 1)`` and a landmark ``x`` maps to the
grid_sample coordinate ``2x / W - 1`` (align_corners=False, `lafs.models.tokenizer`).

**The released LAFS fit** (szlbiubiubiu/LAFS_CVPR2024, face_pre_pro/ViT_face.py, the min-max step before
``extract_patches_pytorch_gridsample``): each image's 2K predicted numbers are rescaled *together*, one minimum and
one maximum over all x and y values, to ``[0, 111]`` (``W - 1`` for W = 112). A released landmark ``L`` samples the
8 points ``L - 4, ..., L + 3`` per axis at grid ``(L + o) / (W / 2) - 1`` (align_corners=False), which in our
convention are the pixel coordinates ``L + o``: the patch our tokenizer samples around ``L - 0.5`` (its offsets are
``-3.5 ... 3.5``). So the released ``[0, 111]`` is our ``[-0.5, W - 1.5]``, and `minmax_fit` maps landmarks there,
sampling exactly the released pixels. Its patches reach 4 pixels past every border: the crop is fully tiled only in
the axis with the larger spread (the fit keeps the face's aspect ratio). ``minmax_axes`` (not in the released code)
fits each axis on its own, so both axes span the crop.

**Valid tokens.** A token takes part in attention (as a key) when its landmark is valid in the data and, unless a fit
placed the landmarks on the crop by construction, its centre lies inside the image, ``[0, W) x [0, H)``: a centre
off the view would otherwise sample zero padding the model cannot tell from a dark face.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

LandmarkFit = Literal["none", "minmax", "minmax_axes"]
LANDMARK_FITS: tuple[LandmarkFit, ...] = get_args(LandmarkFit)
_MIN_SPREAD = 1e-6  # pixels: all landmarks on one point would divide by zero (the released code gives NaN)


def minmax_fit(
    landmarks: torch.Tensor, size: tuple[int, int], valid: torch.Tensor | None = None, joint: bool = True
) -> torch.Tensor:
    """Landmarks (batch, K, 2) rescaled per image to span ``[-0.5, W - 1.5] x [-0.5, H - 1.5]`` (the released range).

    ``size`` is the image's (H, W). ``joint``: one minimum and maximum over both coordinates, as released; else one
    per axis. Only landmarks valid in ``valid`` (batch, K) set the range (an image with none keeps its spread at 1).
    """
    height, width = size
    if valid is None:
        valid = torch.ones(landmarks.shape[:2], dtype=torch.bool, device=landmarks.device)
    keep = valid[..., None].expand_as(landmarks)
    dims = (1, 2) if joint else (1,)
    low = torch.where(keep, landmarks, torch.inf).amin(dim=dims, keepdim=True)
    high = torch.where(keep, landmarks, -torch.inf).amax(dim=dims, keepdim=True)
    found = valid.any(dim=1)[:, None, None]
    low = torch.where(found, low, 0.0)
    spread = torch.where(found, high - low, 1.0).clamp_min(_MIN_SPREAD)
    extent = landmarks.new_tensor([width - 1.0, height - 1.0])
    return (landmarks - low) / spread * extent - 0.5


def fit_landmarks(
    landmarks: torch.Tensor, fit: LandmarkFit, size: tuple[int, int], valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Landmarks (batch, K, 2) where the tokens sample under ``fit`` (``none``: as given)."""
    if fit == "none":
        return landmarks
    return minmax_fit(landmarks, size, valid, joint=fit == "minmax")


def token_validity(
    landmarks: torch.Tensor, fit: LandmarkFit, size: tuple[int, int], valid: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Which tokens may be attended to, (batch, K) bool, for fitted landmarks (batch, K, 2) of images of ``size``.

    None means every token (a fit with no data mask): no attention mask, so attention keeps its fastest kernel.
    """
    if fit != "none":
        return valid  # fitted centres lie on the crop (the released range starts half a pixel before it)
    height, width = size
    x, y = landmarks.unbind(-1)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return inside if valid is None else inside & valid
