"""Shared fixtures: small data sets written to disk from the synthetic faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig


def write_face_folder(root: Path, identities: int = 3, per_identity: int = 4, seed: int = 0) -> tuple[Path, list]:
    """Synthetic faces as root/<identity>/<n>.png; returns the root and the rendered items in folder order."""
    faces = SyntheticFaces(SyntheticFacesConfig(num_identities=identities, images_per_identity=per_identity, seed=seed))
    items = [faces[i] for i in range(len(faces))]
    for item in items:
        folder = root / f"person_{item['label']:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        number = item["index"] % per_identity
        cv2.imwrite(str(folder / f"{number}.png"), cv2.cvtColor(item["image"], cv2.COLOR_RGB2BGR))
    return root, items


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    return write_face_folder(tmp_path_factory.mktemp("faces") / "faces")


def grey_image(path: Path, size: int = 112) -> Path:
    cv2.imwrite(str(path), np.full((size, size, 3), 127, dtype=np.uint8))
    return path
