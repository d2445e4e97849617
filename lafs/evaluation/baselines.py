"""Hand-crafted face descriptors, the floor a trained encoder must clear: LBP histograms and raw grey pixels.

    features = describe(images, "lbp")   # images (N, H, W, 3) uint8 RGB aligned crops -> (N, D) float32
    model = HandCraftedEncoder("lbp")    # the same as a model: evaluate_sets / embed_images take it like an encoder

Both are scored like an encoder's embeddings (cosine similarity of the pair's rows), so `verification_report` and
the evaluation report treat them exactly as a model. ``lbp``: the classic uniform LBP of Ahonen et al. (8
neighbours at radius 1, the 58 uniform codes plus one bin for all others = 59 bins, scikit-image's
``nri_uniform``), histogrammed in a 7 x 7 grid of cells and square-rooted (cosine of square-rooted histograms is the
Hellinger kernel, which suits histograms better than their raw cosine). ``pixels``: the grey image at 32 x 32, each
row centred on its own mean (cosine is then Pearson correlation, blind to brightness).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from skimage.feature import local_binary_pattern
from torch import nn

BASELINES = ("lbp", "pixels")
LBP_BINS = 59  # 58 uniform patterns of 8 neighbours + 1 for every non-uniform one
LBP_GRID = 7  # cells per side (16 x 16 pixel cells on a 112 x 112 crop)
PIXEL_SIDE = 32  # raw-pixel descriptors are grey images at this side


def _grey(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"images must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def lbp_histogram(image: np.ndarray, grid: int = LBP_GRID) -> np.ndarray:
    """(grid * grid * 59,) float32: square-rooted, per-cell normalised uniform-LBP histograms of one H x W x 3 face."""
    codes = local_binary_pattern(_grey(image), P=8, R=1, method="nri_uniform").astype(np.int64)
    rows = np.array_split(np.arange(codes.shape[0]), grid)
    cols = np.array_split(np.arange(codes.shape[1]), grid)
    cells = []
    for r in rows:
        for c in cols:
            counts = np.bincount(codes[np.ix_(r, c)].ravel(), minlength=LBP_BINS).astype(np.float32)
            cells.append(np.sqrt(counts / max(counts.sum(), 1.0)))
    return np.concatenate(cells)


def grey_pixels(image: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    """(side * side,) float32: the grey face resized to side x side (area filter), centred on its mean."""
    small = cv2.resize(_grey(image), (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return small - small.mean()


def describe(images: Sequence[np.ndarray] | np.ndarray, kind: str, flip: bool = True) -> np.ndarray:
    """(N, D) float32 descriptors of aligned faces (N, H, W, 3) uint8; ``flip`` adds the mirror image's, as the
    encoders' flip test-time augmentation does."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
    function = lbp_histogram if kind == "lbp" else grey_pixels
    rows = []
    for image in images:
        row = function(np.asarray(image))
        if flip:
            row = row + function(np.ascontiguousarray(np.asarray(image)[:, ::-1]))
        rows.append(row)
    return np.stack(rows).astype(np.float32, copy=False)


class HandCraftedEncoder(nn.Module):
    """A descriptor behind the encoder call: images (B, 3, H, W) in [-1, 1] -> (B, D) float32 features.

    It has no weights; the images go back to uint8 (the inverse of `lafs.data.collate.normalize_images`), so the
    descriptor sees the very pixels a model would. Flip augmentation is the caller's, as for any encoder.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in BASELINES:
            raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
        self.kind = kind

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        features = describe(pixels.permute(0, 2, 3, 1).numpy(), self.kind, flip=False)
        return torch.from_numpy(features).to(images.device)
