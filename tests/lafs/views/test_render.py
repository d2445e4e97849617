"""The one renderer in both places: worker (one image) and device (a batch) give the same views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs.data.collate import collate_faces
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.views import (
    DeviceViews,
    LandmarkViews,
    ViewConfig,
    ViewDraws,
    collate_views,
    draw_views,
)
from tests.lafs.views.common import (
    SET,
)


def _one(draws: ViewDraws, i: int) -> ViewDraws:
    return ViewDraws(*(getattr(draws, f)[i : i + 1] for f in ("maps", "jitter", "local_ids", "photometric")))


@pytest.mark.parametrize("photometric", [False, True])
def test_worker_and_device_give_the_same_views_for_the_same_numbers(faces: list[dict], photometric: bool) -> None:
    assert_renderers_agree(ViewConfig(num_local=3, local_landmarks=7, photometric=photometric), SET, faces)


@pytest.mark.parametrize("photometric", [False, True])
def test_worker_and_device_give_the_same_patches_views(photometric: bool) -> None:
    dataset = SyntheticFaces(SyntheticFacesConfig(num_identities=2, images_per_identity=2, landmark_set="grid196"))
    cfg = ViewConfig(kind="patches", num_local=3, photometric=photometric)
    on_device = assert_renderers_agree(cfg, "grid196", [dataset[i] for i in range(len(dataset))])
    assert on_device["global_images"].shape[-1] == 112 and on_device["local_images"].shape[-1] == 48


def assert_renderers_agree(cfg: ViewConfig, landmark_set: str, faces: list[dict]) -> dict[str, torch.Tensor]:
    """Views of ``faces`` made by the device renderer and, one image at a time, by the worker's, from the same draws,
    are the same; returns the device's."""
    k = len(faces[0]["landmarks"])
    valid = np.ones((len(faces), k), dtype=bool)
    valid[1, :10] = False  # masks travel with the landmarks through flips and subsets
    items = [face | {"landmark_valid": v} for face, v in zip(faces, valid, strict=True)]
    batch = collate_faces(items)
    draws = draw_views(cfg, k, (112, 112), len(faces), torch.Generator().manual_seed(3))
    assert bool((draws.maps[:, :, 0, 0] < 0).any()) and bool((draws.maps[:, :, 0, 0] > 0).any())  # both flips

    on_device = DeviceViews(cfg, landmark_set).render(batch, draws)
    worker = LandmarkViews(cfg, landmark_set)
    reference = collate_views(
        [
            worker.render(f["image"], f["landmarks"], _one(draws, i), v) | {"label": f["label"], "index": f["index"]}
            for i, (f, v) in enumerate(zip(faces, valid, strict=True))
        ]
    )
    # Landmarks: the same elementwise float ops whatever the batch size, so exactly equal.
    for key in ("global_landmarks", "local_landmarks", "global_valid", "local_valid", "local_ids", "label", "index"):
        assert torch.equal(on_device[key], reference[key]), key
    # Pixels: the same renderer; the worker rounds to uint8, the device normalises to [-1, 1]. So each worker pixel
    # is the device pixel rounded to nearest: at most half a grey level apart, plus float noise well below 1e-3
    # levels (normalisation, and per-image sums computed within a batch of 1 or of 5).
    for key in ("global_images", "local_images"):
        assert on_device[key].dtype == torch.float32 and reference[key].dtype == torch.uint8
        levels = (on_device[key] * 0.5 + 0.5) * 255.0
        assert (levels - reference[key].float()).abs().max() <= 0.5 + 1e-3, key
    return on_device
