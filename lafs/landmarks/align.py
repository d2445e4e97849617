"""Five-point similarity alignment onto the standard ArcFace 112 x 112 template.

Coordinates follow the project contract: ``(x, y)`` pixels, pixel ``j`` spans ``[j, j + 1)``. OpenCV's
``warpAffine`` (and insightface, which publishes the template) puts pixel centres on integers instead, so
both conversions happen here and nowhere else.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

ALIGNED_SIZE = 112

# insightface's arcface_dst, in OpenCV's integer-centre convention: eye centres, nose tip, mouth corners, each
# listed image-left first.
ARCFACE_TEMPLATE_OPENCV = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# The same five points in the project's convention (pixel centres at j + 0.5).
ARCFACE_TEMPLATE = ARCFACE_TEMPLATE_OPENCV + 0.5


def estimate_alignment(five_points: np.ndarray) -> np.ndarray:
    """Similarity transform (2 x 3, project coordinates) taking five face points onto the ArcFace template.

    ``five_points`` is (5, 2): left eye, right eye, nose tip, left and right mouth corner, as seen in the image.
    """
    points = np.asarray(five_points, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"five_points must be a finite (5, 2) array, got shape {points.shape}")
    # A similarity is equivariant to a common shift, so fitting in either convention gives the same map.
    transform = SimilarityTransform.from_estimate(points, ARCFACE_TEMPLATE)
    if not transform:
        raise ValueError("cannot fit a similarity transform to these five points (degenerate layout)")
    return transform.params[:2].astype(np.float64)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 affine map to points (..., 2); returns float32 of the same shape."""
    points = np.asarray(points, dtype=np.float64)
    out = points @ matrix[:, :2].T + matrix[:, 2]
    return out.astype(np.float32)


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp an H x W x 3 uint8 image with a project-coordinate affine map into a size x size crop."""
    # Move the map into OpenCV's convention: p_cv = p - 0.5 on both sides.
    linear = matrix[:, :2]
    shift = matrix[:, 2] + linear @ np.array([0.5, 0.5]) - 0.5
    opencv_matrix = np.concatenate([linear, shift[:, None]], axis=1)
    return cv2.warpAffine(image, opencv_matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def align_face(image: np.ndarray, five_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Align a face to 112 x 112 by its five points; returns (aligned uint8 image, 2 x 3 map image -> crop)."""
    matrix = estimate_alignment(five_points)
    return warp_image(image, matrix), matrix
