"""Landmark sets (which mesh points, their flip and template), alignment, and landmark sources."""

from lafs.landmarks.sets import FaceMesh, LandmarkSet, get_face_mesh, get_landmark_set, landmark_set_names

__all__ = ["FaceMesh", "LandmarkSet", "get_face_mesh", "get_landmark_set", "landmark_set_names"]
