"""Views on the accelerator: same landmark positions as the worker path for the same numbers, batched shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafs.augment import NUM_GLOBAL, LandmarkViews, ViewConfig, ViewDraws, collate_views, draw_views
from lafs.data.collate import collate_faces
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.device_views import DeviceViews
from lafs.photometric import IDENTITY, SIGMA, SOLARIZE

SET = "mediapipe49"
K = 49


@pytest.fixture(scope="module")
def faces() -> list[dict]:
    data = SyntheticFaces(SyntheticFacesConfig(num_identities=3, images_per_identity=2, landmark_set=SET))
    return [data[i] for i in range(5)]


def _one(draws: ViewDraws, i: int) -> ViewDraws:
    return ViewDraws(*(getattr(draws, f)[i : i + 1] for f in ("maps", "jitter", "local_ids", "seeds", "photometric")))


@pytest.mark.parametrize("photometric", [False, True])
def test_device_landmarks_equal_the_worker_path_for_the_same_numbers(faces: list[dict], photometric: bool) -> None:
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
    for key in ("global_landmarks", "local_landmarks"):
        torch.testing.assert_close(on_device[key], reference[key], rtol=0, atol=1e-4)
    for key in ("global_valid", "local_valid", "local_ids", "label", "index"):
        assert torch.equal(on_device[key], reference[key]), key
    if not photometric:  # the same warp: OpenCV's 1/32-pixel fixed point and uint8 rounding are the only difference
        for key in ("global_images", "local_images"):
            expected = reference[key].float() / 127.5 - 1.0
            assert on_device[key].shape == expected.shape and on_device[key].dtype == torch.float32
            assert (on_device[key] - expected).abs().max() < 0.02
            assert (on_device[key] - expected).abs().mean() < 0.005


def test_views_are_a_function_of_the_generator_seed(faces: list[dict]) -> None:
    views = DeviceViews(ViewConfig(num_local=2, local_landmarks=5), SET)
    batch = collate_faces(faces)
    first, again = (views(batch, torch.Generator().manual_seed(7)) for _ in range(2))
    other = views(batch, torch.Generator().manual_seed(8))
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["global_images"], other["global_images"])
    assert first["local_images"].shape == (5, 2, 3, 112, 112) and first["local_ids"].shape == (5, 2, 5)


def test_missing_mask_means_all_valid_and_globals_only_works(faces: list[dict]) -> None:
    out = DeviceViews(ViewConfig(num_local=0), SET)(collate_faces(faces), torch.Generator().manual_seed(0))
    assert bool(out["global_valid"].all()) and out["global_valid"].shape == (5, NUM_GLOBAL, K)
    assert out["local_images"].shape == (5, 0, 3, 112, 112) and out["local_landmarks"].shape == (5, 0, 36, 2)


def test_photometric_draws_follow_the_recipe() -> None:
    cfg = ViewConfig(num_local=6)
    params = draw_views(cfg, K, (112, 112), 4000, torch.Generator().manual_seed(1)).photometric
    blurred = (params[..., SIGMA] > 0).float().mean(0)
    torch.testing.assert_close(blurred[:2], torch.tensor([1.0, 0.1]), atol=0.03, rtol=0)
    torch.testing.assert_close(blurred[2:], torch.full((6,), 0.5), atol=0.04, rtol=0)
    solarized = params[..., SOLARIZE].mean(0)
    assert float(solarized[1]) == pytest.approx(0.2, abs=0.03) and float(solarized[[0, 2, 3]].sum()) == 0
    sigma = params[..., SIGMA][params[..., SIGMA] > 0]
    assert float(sigma.min()) >= 0.1 and float(sigma.max()) <= 2.0
    as_list = ViewConfig(blur_prob=[1.0, 0.0, 0.0])  # YAML gives lists: the draw must take them as tuples do
    listed = draw_views(as_list, K, (112, 112), 50, torch.Generator().manual_seed(1)).photometric[..., SIGMA] > 0
    assert bool(listed[:, 0].all()) and not bool(listed[:, 1:].any())
    off = draw_views(ViewConfig(photometric=False), K, (112, 112), 3, torch.Generator().manual_seed(1)).photometric
    assert torch.equal(off, torch.tensor(IDENTITY).expand_as(off))
