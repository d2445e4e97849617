"""Landmark sources: where a face's K landmarks come from when a dataset carries none.

A source maps one H x W x 3 uint8 RGB face to ``(landmarks (K, 2) float32 pixels, valid (K,) bool)``. Sources are
registered by name so configs can choose them (``template``, ``mediapipe``).
"""

from __future__ import annotations

import numpy as np

from lafs.landmarks.mediapipe import FaceMeshDetector
from lafs.landmarks.sets import get_landmark_set
from lafs.registry import LANDMARK_SOURCES


def scaled_template(landmark_set: str, width: int, height: int) -> np.ndarray:
    """The set's template (K, 2) for an aligned face of ``width`` x ``height`` pixels."""
    landmarks = get_landmark_set(landmark_set)
    return (landmarks.template * np.array([width, height]) / landmarks.image_size).astype(np.float32)


@LANDMARK_SOURCES.register("template")
class TemplateLandmarks:
    """The mean landmark positions of an ArcFace-aligned face: right for aligned crops, free, never missing."""

    def __init__(self, landmark_set: str = "mediapipe196") -> None:
        self.landmark_set = landmark_set
        self.num_landmarks = get_landmark_set(landmark_set).num_landmarks

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        return scaled_template(self.landmark_set, width, height), np.ones(self.num_landmarks, dtype=bool)


@LANDMARK_SOURCES.register("mediapipe")
class MediaPipeLandmarks:
    """MediaPipe face mesh, subsampled to the landmark set; a face it misses gets the template, marked invalid.

    Departure from the paper: LAFS uses a learned landmark network (Part-fViT's STN); MediaPipe is the offline,
    pre-trained stand-in. One detector per process; it runs on the CPU and cannot batch.
    """

    def __init__(self, landmark_set: str = "mediapipe196", min_detection_confidence: float = 0.5) -> None:
        self.landmark_set = landmark_set
        self.mesh_indices = get_landmark_set(landmark_set).mesh_indices
        self.detector = FaceMeshDetector(min_detection_confidence=min_detection_confidence)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mesh = self.detector(image)
        if mesh is None:
            height, width = image.shape[:2]
            return scaled_template(self.landmark_set, width, height), np.zeros(len(self.mesh_indices), dtype=bool)
        return mesh[self.mesh_indices, :2].copy(), np.ones(len(self.mesh_indices), dtype=bool)

    def close(self) -> None:
        self.detector.close()
