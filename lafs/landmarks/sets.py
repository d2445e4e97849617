"""Named, versioned landmark sets: which MediaPipe mesh points form the K landmarks, their order, flip and template.

The table is data (``data/mediapipe_face_mesh.json``), derived by ``python -m tools.make_landmark_sets`` from
MediaPipe run on a real ArcFace-aligned face. Nothing here imports MediaPipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from lafs.errors import ConfigError

TABLE_PATH = Path(__file__).with_name("data") / "mediapipe_face_mesh.json"
TABLE_VERSION = 1


@dataclass(frozen=True, eq=False)
class FaceMesh:
    """The full 468-point mesh on the aligned 112 x 112 face.

    ``template`` (468, 2) pixels, ``depth`` (468,) pixels (MediaPipe's relative z, smaller is nearer the camera),
    ``flip_permutation`` (468,) mirror partner of each point, ``contours`` name -> (closed, ordered id paths).
    """

    image_size: int
    template: np.ndarray
    depth: np.ndarray
    flip_permutation: np.ndarray
    contours: dict[str, tuple[bool, tuple[tuple[int, ...], ...]]]


@dataclass(frozen=True, eq=False)
class LandmarkSet:
    """K landmarks chosen from the mesh, in a fixed order; landmark id k is mesh point ``mesh_indices[k]``.

    ``flip_permutation`` (K,): after a horizontal flip, the point in slot k is landmark ``flip_permutation[k]``.
    ``template`` (K, 2): mean positions, in pixels, on a face aligned to the ArcFace 112 x 112 template.
    """

    name: str
    version: int
    image_size: int
    mesh_indices: np.ndarray
    flip_permutation: np.ndarray
    template: np.ndarray

    @property
    def num_landmarks(self) -> int:
        return len(self.mesh_indices)


@cache
def _table() -> dict:
    table = json.loads(TABLE_PATH.read_text())
    if table.get("format") != "lafs-landmark-table" or table.get("version") != TABLE_VERSION:
        raise ConfigError(f"{TABLE_PATH}: not a version {TABLE_VERSION} lafs landmark table")
    return table


@cache
def get_face_mesh() -> FaceMesh:
    """The full MediaPipe mesh template with its flip permutation and contours."""
    mesh = _table()["mesh"]
    contours = {
        name: (bool(c["closed"]), tuple(tuple(path) for path in c["paths"])) for name, c in _table()["contours"].items()
    }
    return FaceMesh(
        image_size=int(_table()["image_size"]),
        template=_readonly(np.asarray(mesh["template"], dtype=np.float32)),
        depth=_readonly(np.asarray(mesh["depth"], dtype=np.float32)),
        flip_permutation=_readonly(np.asarray(mesh["flip_permutation"], dtype=np.int64)),
        contours=contours,
    )


def landmark_set_names() -> list[str]:
    return sorted(_table()["sets"])


@cache
def get_landmark_set(name: str) -> LandmarkSet:
    """Look up a landmark set by name (``mediapipe196``, ``mediapipe49``, ``mediapipe468``)."""
    sets = _table()["sets"]
    if name not in sets:
        raise ConfigError(f"unknown landmark set '{name}' (known: {', '.join(sorted(sets))})")
    mesh = get_face_mesh()
    indices = np.asarray(sets[name]["mesh_indices"], dtype=np.int64)
    slot_of = {int(m): k for k, m in enumerate(indices)}
    try:
        flip = np.array([slot_of[int(mesh.flip_permutation[m])] for m in indices], dtype=np.int64)
    except KeyError as missing:
        raise ConfigError(f"landmark set '{name}' is not closed under the flip: mesh point {missing} missing") from None
    return LandmarkSet(
        name=name,
        version=int(sets[name]["version"]),
        image_size=mesh.image_size,
        mesh_indices=_readonly(indices),
        flip_permutation=_readonly(flip),
        template=_readonly(mesh.template[indices]),
    )


def _readonly(array: np.ndarray) -> np.ndarray:
    # The sets are cached and shared: a caller writing into one would corrupt every other user.
    array.setflags(write=False)
    return array
