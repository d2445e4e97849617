"""Named, versioned landmark sets: which MediaPipe mesh points form the K landmarks, their order, flip and template.

The mesh sets' table is data (``data/mediapipe_face_mesh.json``), derived by ``python -m tools.make_landmark_sets``
from MediaPipe run on a real ArcFace-aligned face. Nothing here imports MediaPipe.

The grid sets (``grid196``) are no facial points: they are the centres of the regular grid of p x p patches of the
crop, row-major, the tokens of a plain ViT. The tokenizer samples exactly the regular patch at such a centre, so a
`LandmarkViT` over a grid set with its template landmarks is a ViT over patches: the LAFS paper's DINO baseline
(`lafs.views` ``views.kind=patches``). Their points never follow the face, and a horizontal flip mirrors columns.
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
GRID_SETS = {"grid196": 8}  # name -> patch side: the 14 x 14 grid of 8 x 8 patches of the 112 crop (fViT's tokens)
GRID_IMAGE_SIZE = 112  # the crop side the grid sets tile, that of the mesh sets' template


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
    """K landmarks in a fixed order: mesh points (landmark id k is mesh point ``mesh_indices[k]``) or a patch grid.

    ``flip_permutation`` (K,): after a horizontal flip, the point in slot k is landmark ``flip_permutation[k]``.
    ``template`` (K, 2): mean positions, in pixels, on a face aligned to the ArcFace 112 x 112 template (for a grid
    set: the patch centres). ``patch_size``: a grid set's patch side, None for mesh sets.
    """

    name: str
    version: int
    image_size: int
    flip_permutation: np.ndarray
    template: np.ndarray
    mesh_points: np.ndarray | None = None  # (K,) mesh indices; None for a grid set
    patch_size: int | None = None

    @property
    def num_landmarks(self) -> int:
        return len(self.template)

    @property
    def mesh_indices(self) -> np.ndarray:
        """(K,) the MediaPipe mesh point of each landmark; a grid set has none (a one-line `ConfigError`)."""
        if self.mesh_points is None:
            raise ConfigError(
                f"landmark set '{self.name}' is the regular grid of {self.patch_size} x {self.patch_size} patches, "
                "not face-mesh points: it takes no landmark detection (use data.landmarks=template)"
            )
        return self.mesh_points

    def points_on(self, mesh: np.ndarray, size: int) -> np.ndarray:
        """The set's (K, 2) points on a face whose (468, 2+) mesh points are pixels of a ``size`` x ``size`` image.

        Mesh sets pick their mesh points; a grid set gives its grid scaled to the image, which is the same for
        every face (patches do not follow the face).
        """
        if self.mesh_points is None:
            return (self.template * (size / self.image_size)).astype(np.float32)
        return np.asarray(mesh)[self.mesh_points, :2]


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
    return sorted([*_table()["sets"], *GRID_SETS])


@cache
def get_landmark_set(name: str) -> LandmarkSet:
    """Look up a landmark set by name (``mediapipe196``, ``mediapipe49``, ``mediapipe468``, ``grid196``)."""
    if name in GRID_SETS:
        return grid_set(name, GRID_SETS[name])
    sets = _table()["sets"]
    if name not in sets:
        raise ConfigError(f"unknown landmark set '{name}' (known: {', '.join(landmark_set_names())})")
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
        flip_permutation=_readonly(flip),
        template=_readonly(mesh.template[indices]),
        mesh_points=_readonly(indices),
    )


def patch_centres(side: int, patch: int) -> np.ndarray:
    """Centres (n * n, 2) float32 ``(p c + p / 2, p r + p / 2)`` of the n x n regular ``patch``-pixel patches of a
    ``side``-pixel image, id ``n r + c`` (row-major, as ViTs flatten patches)."""
    centres = np.arange(side // patch, dtype=np.float32) * patch + patch / 2
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([x, y], -1).reshape(-1, 2)


def grid_set(name: str, patch: int, image_size: int = GRID_IMAGE_SIZE) -> LandmarkSet:
    """The grid set of the regular ``patch``-pixel patches of the crop (`patch_centres`); the flip maps column c of
    n to ``n - 1 - c``."""
    side = image_size // patch
    ids = np.arange(side * side, dtype=np.int64).reshape(side, side)
    return LandmarkSet(
        name=name,
        version=1,
        image_size=image_size,
        flip_permutation=_readonly(ids[:, ::-1].reshape(-1).copy()),
        template=_readonly(patch_centres(image_size, patch)),
        patch_size=patch,
    )


def _readonly(array: np.ndarray) -> np.ndarray:
    # The sets are cached and shared: a caller writing into one would corrupt every other user.
    array.setflags(write=False)
    return array
