"""Face data: readers for RecordIO, image folders, list files and ``.bin`` pair sets, one `open_dataset`, and the
procedural synthetic faces that are the project's embedded default data."""

from lafs.data.open import SYNTHETIC, DatasetConfig, open_dataset
from lafs.data.pairs import load_bin, write_bin
from lafs.data.synthetic import FaceIdentity, SyntheticFaces, SyntheticFacesConfig, render_face, sample_identity

__all__ = [
    "SYNTHETIC",
    "DatasetConfig",
    "FaceIdentity",
    "SyntheticFaces",
    "SyntheticFacesConfig",
    "load_bin",
    "open_dataset",
    "render_face",
    "sample_identity",
    "write_bin",
]
