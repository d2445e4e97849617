"""Landmark sets (which mesh points, their flip and template), alignment, and landmark sources."""

from lafs.landmarks.sets import FaceMesh, LandmarkSet, get_face_mesh, get_landmark_set, landmark_set_names
from lafs.landmarks.sources import MediaPipeLandmarks, TemplateLandmarks, scaled_template

__all__ = [
    "FaceMesh",
    "LandmarkSet",
    "MediaPipeLandmarks",
    "TemplateLandmarks",
    "get_face_mesh",
    "get_landmark_set",
    "landmark_set_names",
    "scaled_template",
]
