"""Views of whole batches on their device: seeds, masks, globals only."""

from __future__ import annotations

import torch

from lafs.data.collate import collate_faces
from lafs.views import (
    NUM_GLOBAL,
    DeviceViews,
    ViewConfig,
)
from tests.lafs.views.common import (
    SET,
    K,
)


def test_views_are_a_function_of_the_generator_seed(faces: list[dict]) -> None:
    views = DeviceViews(ViewConfig(num_local=2, local_landmarks=5), SET)
    batch = collate_faces(faces)
    first, again = (views(batch, torch.Generator().manual_seed(7)) for _ in range(2))
    other = views(batch, torch.Generator().manual_seed(8))
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["global_images"], other["global_images"])
    assert first["local_images"].shape == (6, 2, 3, 112, 112) and first["local_ids"].shape == (6, 2, 5)


def test_missing_mask_means_all_valid_and_globals_only_works(faces: list[dict]) -> None:
    out = DeviceViews(ViewConfig(num_local=0), SET)(collate_faces(faces), torch.Generator().manual_seed(0))
    assert bool(out["global_valid"].all()) and out["global_valid"].shape == (6, NUM_GLOBAL, K)
    assert out["local_images"].shape == (6, 0, 3, 112, 112) and out["local_landmarks"].shape == (6, 0, K, 2)
