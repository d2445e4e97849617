"""MediaPipe face mesh (0.10.x legacy ``solutions`` API, model shipped inside the wheel) as a landmark detector.

MediaPipe is imported lazily: it is slow to import and only the landmark tools and the live landmark source need it.
Its normalised coordinates run from 0 at the left/top image edge to 1 at the right/bottom edge, so
``x_pixels = x * width`` is already the project's convention (pixel ``j`` spans ``[j, j + 1)``).
"""

from __future__ import annotations

from types import TracebackType

import numpy as np

MESH_POINTS = 468
MESH_POINTS_WITH_IRISES = 478
# Mesh ids for the five alignment points. MediaPipe names sides from the subject's view, so the subject's right
# eye is the image-left one.
RIGHT_IRIS_CENTRE = 468
LEFT_IRIS_CENTRE = 473
NOSE_TIP = 1
MOUTH_CORNER_IMAGE_LEFT = 61
MOUTH_CORNER_IMAGE_RIGHT = 291
# Eye contours (subject's right eye first), used for eye centres when the iris points were not computed.
RIGHT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)


def normalized_to_pixels(normalized: np.ndarray, width: int, height: int) -> np.ndarray:
    """Convert MediaPipe (..., 2 or 3) normalised landmarks to pixels; z is scaled by the width, as MediaPipe does."""
    scale = np.array([width, height, width][: normalized.shape[-1]], dtype=np.float64)
    return (np.asarray(normalized, dtype=np.float64) * scale).astype(np.float32)


def five_points_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """The ArcFace five points (5, 2) from a (468 or 478, >= 2) mesh: eye centres, nose tip, mouth corners."""
    if len(mesh) >= MESH_POINTS_WITH_IRISES:
        eyes = mesh[[RIGHT_IRIS_CENTRE, LEFT_IRIS_CENTRE], :2]
    else:
        eyes = np.stack([mesh[list(RIGHT_EYE_CONTOUR), :2].mean(0), mesh[list(LEFT_EYE_CONTOUR), :2].mean(0)])
    rest = mesh[[NOSE_TIP, MOUTH_CORNER_IMAGE_LEFT, MOUTH_CORNER_IMAGE_RIGHT], :2]
    return np.concatenate([eyes, rest]).astype(np.float32)


class FaceMeshDetector:
    """Single-face MediaPipe mesh on still RGB images; returns (468 or 478, 3) pixel (x, y, z) or None if no face.

    MediaPipe cannot batch and runs on the CPU: run one detector per process and cache the results.
    """

    def __init__(self, refine_landmarks: bool = False, min_detection_confidence: float = 0.5) -> None:
        from mediapipe.python.solutions.face_mesh import FaceMesh

        self._mesh = FaceMesh(
            static_image_mode=True,
            max_num_faces=1,
            refine_landmarks=refine_landmarks,
            min_detection_confidence=min_detection_confidence,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
        result = self._mesh.process(np.ascontiguousarray(image))
        if not result.multi_face_landmarks:
            return None
        points = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
        return normalized_to_pixels(points, image.shape[1], image.shape[0])

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
