"""Face data: the procedural synthetic faces (the project's embedded default data) and what feeds them to models."""

from lafs.data.synthetic import FaceIdentity, SyntheticFaces, SyntheticFacesConfig, render_face, sample_identity

__all__ = ["FaceIdentity", "SyntheticFaces", "SyntheticFacesConfig", "render_face", "sample_identity"]
