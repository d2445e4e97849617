"""MediaPipe face mesh (0.10.x legacy ``solutions`` API, model shipped inside the wheel) as a landmark detector.

MediaPipe is imported lazily: it is slow to import and only the landmark tools and the live landmark source need it.
Its normalised coordinates run from 0 at the left/top image edge to 1 at the right/bottom edge, so
``x_pixels = x * width`` is already the project's convention (pixel ``j`` spans ``[j, j + 1)``).

MediaPipe's C++ side (TensorFlow Lite, absl, glog) writes a few lines to the process's stderr when a graph starts and
runs its first image (XNNPACK delegate, "absl::InitializeLog", feedback-tensor warnings), and its protobuf use warns
on every image; none of its environment variables turn them off. A detector therefore points file descriptor 2 at
``/dev/null`` while it builds its graph and runs one blank image, and ignores that protobuf warning, so a tool with
N worker processes prints its own summary instead of N screens of warnings. ``quiet=False`` keeps them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
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
_WARM_UP_SIZE = 64  # px: the blank image a quiet detector runs once so that MediaPipe's start-up logging is over


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


@contextlib.contextmanager
def silenced_stderr(enabled: bool = True) -> Iterator[None]:
    """Send everything written to file descriptor 2 (C/C++ libraries included) to /dev/null inside the block.

    Python's ``sys.stderr`` is flushed first so nothing written before is lost; errors raised inside still propagate
    (and print once the descriptor is back).
    """
    if not enabled:
        yield
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect (a closed descriptor): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class FaceMeshDetector:
    """MediaPipe's mesh on still RGB images: a call returns (468 or 478, 3) pixel (x, y, z) of the largest of the
    faces found (up to ``max_num_faces``; with the default 1, MediaPipe's first), or None; `faces` returns them all.

    MediaPipe cannot batch and runs on the CPU: run one detector per process and cache the results. With ``quiet``
    (the default) MediaPipe's start-up logging is silenced (see the module docstring).
    """

    def __init__(
        self,
        refine_landmarks: bool = False,
        min_detection_confidence: float = 0.5,
        quiet: bool = True,
        max_num_faces: int = 1,
    ) -> None:
        if quiet:
            warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
        with silenced_stderr(quiet):
            from mediapipe.python.solutions.face_mesh import FaceMesh

            self._mesh = FaceMesh(
                static_image_mode=True,
                max_num_faces=max_num_faces,
                refine_landmarks=refine_landmarks,
                min_detection_confidence=min_detection_confidence,
            )
            # The graph starts its calculators (and logs) in threads of its own: one blank image waits for all of
            # them here, while stderr is still silenced, instead of letting them print during the first real image.
            self._mesh.process(np.zeros((_WARM_UP_SIZE, _WARM_UP_SIZE, 3), dtype=np.uint8))

    def faces(self, image: np.ndarray) -> list[np.ndarray]:
        """Every face's mesh (468 or 478, 3) in pixels, largest first (by the area of its points' bounding box)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
        result = self._mesh.process(np.ascontiguousarray(image))
        meshes = [
            normalized_to_pixels(
                np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64), image.shape[1], image.shape[0]
            )
            for face in result.multi_face_landmarks or []
        ]
        return sorted(meshes, key=lambda mesh: -float(np.prod(np.ptp(mesh[:, :2], axis=0))))

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        found = self.faces(image)
        return found[0] if found else None

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
