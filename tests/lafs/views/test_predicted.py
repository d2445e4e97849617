"""Views placed by a frozen landmark predictor: it sees each view before photometry, jitter and local ids apply."""

from __future__ import annotations

import torch
from torch import nn

from lafs.data.collate import collate_faces
from lafs.views import NUM_GLOBAL, DeviceViews, ViewConfig, draw_views
from lafs.views.predicted import views_with_predicted_landmarks
from tests.lafs.views.common import SET, K


class Recorder(nn.Module):
    """A predictor that puts landmark k at (k, 2k) on every image and keeps what it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images)
        k = torch.arange(K, dtype=torch.float32)
        return torch.stack([k, 2 * k], -1).expand(len(images), -1, -1)


def test_device_views_keep_their_pixels_and_take_the_predicted_points(faces: list[dict]) -> None:
    cfg = ViewConfig(num_local=2, local_landmarks=5)
    batch, predictor = collate_faces(faces), Recorder()
    out = views_with_predicted_landmarks(predictor, batch, torch.Generator().manual_seed(3), cfg, DeviceViews(cfg, SET))
    plain = DeviceViews(cfg, SET)(batch, torch.Generator().manual_seed(3))  # the same draws
    for key in ("global_images", "local_images", "local_ids", "label", "index"):
        assert torch.equal(out[key], plain[key]), key
    draws = draw_views(cfg, K, (112, 112), len(faces), torch.Generator().manual_seed(3))
    points = predictor(torch.zeros(1, 3, 8, 8))[0] + draws.jitter  # (B, V, K, 2)
    torch.testing.assert_close(out["global_landmarks"], points[:, :NUM_GLOBAL], rtol=0, atol=0)
    # Each local view keeps its full predicted set; the encoder gathers its ids (after fitting its token geometry).
    torch.testing.assert_close(out["local_landmarks"], points[:, NUM_GLOBAL:], rtol=0, atol=0)
    assert bool(out["global_valid"].all()) and bool(out["local_valid"].all())
    assert out["local_valid"].shape == (6, 2, K) and out["global_valid"].shape == (6, NUM_GLOBAL, K)
    # The predictor saw every view without photometry (LAFS's un-augmented crop), up to uint8 rounding.
    seen = predictor.seen[0].unflatten(0, (6, NUM_GLOBAL + 2))
    clean = DeviceViews(ViewConfig(num_local=2, local_landmarks=5, photometric=False), SET)(
        batch, torch.Generator().manual_seed(3)
    )
    views = torch.cat([clean["global_images"], clean["local_images"]], 1)
    assert (seen - views).abs().max() <= 1 / 127.5 + 1e-6
    assert (seen[:, :NUM_GLOBAL] - out["global_images"]).abs().max() > 0.1  # the model's views are augmented


def test_loader_views_are_predicted_as_they_come_with_fresh_jitter(faces: list[dict]) -> None:
    cfg = ViewConfig(num_local=2, local_landmarks=5, jitter_std=3.0)
    plain = DeviceViews(cfg, SET)(collate_faces(faces), torch.Generator().manual_seed(0))
    loader = {key: value for key, value in plain.items()}
    for key in ("global_images", "local_images"):  # loader-made views cross as uint8
        loader[key] = ((plain[key] + 1) * 127.5).round().to(torch.uint8)
    predictor = Recorder()
    out = views_with_predicted_landmarks(predictor, loader, torch.Generator().manual_seed(5), cfg)
    assert torch.equal(out["global_images"], loader["global_images"])  # normalised later, with the rest
    assert predictor.seen[0].dtype == torch.float32 and predictor.seen[0].min() >= -1
    jitter = torch.randn((6, NUM_GLOBAL + 2, K, 2), generator=torch.Generator().manual_seed(5)) * 3.0
    points = predictor(torch.zeros(1, 3, 8, 8))[0] + jitter
    torch.testing.assert_close(out["global_landmarks"], points[:, :NUM_GLOBAL], rtol=0, atol=0)
    torch.testing.assert_close(out["local_landmarks"], points[:, NUM_GLOBAL:], rtol=0, atol=0)
    assert torch.equal(out["local_ids"], loader["local_ids"])
