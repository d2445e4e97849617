"""View geometry in project coordinates (pixel ``j`` spans ``[j, j + 1)``): 2 x 3 view maps, and the ONE horizontal
flip with its left/right landmark-id permutation.

A mirrored image swaps the face's sides, so after moving the points the slots are renamed with the landmark set's
``flip_permutation``: slot ``k`` of the mirrored image takes the moved point of id ``flip[k]``, so id ``k`` keeps
naming the same image-side facial point and keeps its position embedding. `swap_sides` is that renaming; the
pretraining views (`map_landmarks`, both renderers), the fine-tuning batch flips (`flip_batch`) and the landmark
predictor's augmentation (`move_landmarks`) all go through it.
"""

from __future__ import annotations

import numpy as np
import torch


def view_maps(boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """2 x 3 maps (..., 2, 3) of boxes (..., 4) ``(x0, y0, w, h)`` onto ``[0, size]^2``, mirrored (x -> size - x)
    where ``flips`` (...) is true: a box's corner (x0, y0) goes to (0, 0) and its far corner to (size, size)."""
    x0, y0, w, h = boxes.unbind(-1)
    sx, sy = size / w, size / h
    zero = torch.zeros_like(sx)
    flipped = flips.to(sx.dtype)
    sign = 1.0 - 2.0 * flipped
    row_x = torch.stack([sign * sx, zero, sign * -x0 * sx + flipped * size], -1)
    return torch.stack([row_x, torch.stack([zero, sy, -y0 * sy], -1)], -2)


def invert_linear(linear: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverses (..., 2, 2) and determinants (...) of 2 x 2 matrices, in closed form (no batched LAPACK call)."""
    (a, b), (c, d) = linear.unbind(-2)[0].unbind(-1), linear.unbind(-2)[1].unbind(-1)
    det = a * d - b * c
    inverse = torch.stack((torch.stack((d, -b), -1), torch.stack((-c, a), -1)), -2) / det[..., None, None]
    return inverse, det


def swap_sides(
    points: torch.Tensor, valid: torch.Tensor, mirrored: torch.Tensor, permutation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rename the landmark slots of mirrored images: points (..., K, 2) and mask (..., K) take slot ``permutation[k]``
    into slot k where ``mirrored`` (...) is true; the points must already be mirrored."""
    permutation = permutation.to(points.device)
    points = torch.where(mirrored[..., None, None], points[..., permutation, :], points)
    return points, torch.where(mirrored[..., None], valid[..., permutation], valid)


def map_landmarks(
    maps: torch.Tensor, landmarks: torch.Tensor, valid: torch.Tensor, permutation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks (B, K, 2) and mask (B, K) of images -> those of their views (B, V, K, 2) and (B, V, K) under maps
    (B, V, 2, 3); mirroring maps (negative determinant) swap sides.

    Elementwise multiply-adds rather than a matmul, so every point is the same float whatever the batch size: the
    two renderers, one image at a time and a batch at a time, give exactly equal landmarks.
    """
    x, y = (coordinate[:, None] for coordinate in landmarks.to(maps.dtype).unbind(-1))  # (B, 1, K) each
    rows = maps[..., None].unbind(-3)  # the map's two rows, (B, V, 3, 1) each
    points = torch.stack([row[:, :, 0] * x + row[:, :, 1] * y + row[:, :, 2] for row in rows], -1)
    _, det = invert_linear(maps[..., :2])
    return swap_sides(points, valid[:, None, :].expand(-1, maps.shape[1], -1), det < 0, permutation)


def flip_batch(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    flipped: torch.Tensor,
    permutation: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mirror the images (B, C, H, W) where ``flipped`` (B,) is true, with their landmarks (B, K, 2) in pixels and the
    optional mask (B, K): a mirrored point lands at ``W - x``, then `swap_sides`. No host synchronisation."""
    images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
    mirrored = torch.stack((images.shape[-1] - landmarks[..., 0], landmarks[..., 1]), -1)
    landmarks = torch.where(flipped[:, None, None], mirrored, landmarks)
    mask = torch.ones(landmarks.shape[:2], dtype=torch.bool, device=landmarks.device) if valid is None else valid
    landmarks, mask = swap_sides(landmarks, mask, flipped, permutation)
    return images, landmarks, None if valid is None else mask


def flip_map(matrix: np.ndarray, size: int) -> np.ndarray:
    """A 2 x 3 ``matrix`` followed by the horizontal flip of a ``size``-wide image, x -> size - x."""
    flipped = np.array(matrix, dtype=np.float64)
    flipped[0] = -flipped[0]
    flipped[0, 2] += size
    return flipped


def is_flipping(matrix: np.ndarray) -> bool:
    """Whether a 2 x 3 map mirrors the image (negative determinant), i.e. whether landmark ids must be permuted."""
    m = np.asarray(matrix, dtype=np.float64)
    return bool(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0] < 0)


def move_landmarks(
    landmarks: np.ndarray, valid: np.ndarray, matrix: np.ndarray, flip_permutation: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (K, 2) and mask (K,) of an image -> float32 landmarks and mask of its view under a 2 x 3 ``matrix``
    (float64 arithmetic); ids swap if it mirrors. `map_landmarks` for one image and one map, on numpy arrays."""
    points, mask = map_landmarks(
        torch.from_numpy(np.asarray(matrix, dtype=np.float64))[None, None],
        torch.from_numpy(np.asarray(landmarks, dtype=np.float64))[None],
        torch.from_numpy(np.asarray(valid, dtype=bool))[None],
        torch.from_numpy(np.asarray(flip_permutation, dtype=np.int64)),
    )
    return points[0, 0].float().numpy(), mask[0, 0].numpy()
