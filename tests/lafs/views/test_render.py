"""The one renderer in both places: worker (one image) and device (a batch) give the same views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs.data.collate import collate_faces
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
    K,
)


def _one(draws: ViewDraws, i: int) -> ViewDraws:
    return ViewDraws(*(getattr(draws, f)[i : i + 1] for f in ("maps", "jitter", "local_ids", "photometric")))


@pytest.mark.parametrize("photometric", [False, True])
def test_worker_and_device_give_the_same_views_for_the_same_numbers(faces: list[dict], photometric: bool) -> None:
    cfg = ViewConfig(num_local=3, local_landmarks=7, photometric=photometric)
    valid = np.ones((len(faces), K), dtype=bool)
    valid[1, :10] = False  # masks travel with the landmarks through flips and subsets
    items = [face | {"landmark_valid": v} for face, v in zip(faces, valid, strict=True)]
    batch = collate_faces(items)
    draws = draw_views(cfg, K, (112, 112), len(faces), torch.Generator().manual_seed(3))
    assert bool((draws.maps[:, :, 0, 0] < 0).any()) and bool((draws.maps[:, :, 0, 0] > 0).any())  # both flips

    on_device = DeviceViews(cfg, SET).render(batch, draws)
    worker = LandmarkViews(cfg, SET)
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
