"""tools.benchmark token-geometry: footprint maths on hand-made layouts, and the sub-command on the template or a
landmark cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lafs.landmarks.cache import CacheInfo, LandmarkCache
from lafs.landmarks.sets import get_landmark_set
from tools.benchmark import main
from tools.benchmarks.token_geometry import footprint_counts, geometry_figures

TINY = ["--batch", "2", "--repeats", "2", "--warmup", "0", "--device", "cpu", "--threads", "1"]


def test_footprints_of_hand_placed_tokens() -> None:
    # A token centred at (4, 4) covers pixels 0..7 of both axes; one at (8, 4) covers x 4..11: 96 pixels, 32 twice.
    counts = footprint_counts(torch.tensor([[[4.0, 4.0], [8.0, 4.0]]]), patch=8, size=16)
    assert counts[0, :8, :12].sum().item() == 128 and counts[0].sum().item() == 128
    assert counts[0, 0, 4:8].tolist() == [2.0] * 4 and counts[0, 0, 8:12].tolist() == [1.0] * 4
    figures = geometry_figures(torch.tensor([[[4.0, 4.0], [8.0, 4.0]]]), patch=8, size=16)
    assert figures == pytest.approx({"coverage": 96 / 256, "overlap": 128 / 96, "off_view": 0.0})


def test_a_grid_tiles_the_view_and_off_view_centres_are_counted() -> None:
    centres = torch.arange(4.0, 112.0, 8.0)
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([x, y], -1).reshape(1, -1, 2)
    assert geometry_figures(grid, patch=8, size=112) == pytest.approx({"coverage": 1.0, "overlap": 1.0, "off_view": 0})
    shifted = geometry_figures(grid - 8.0, patch=8, size=112)  # the first row and column leave the view
    assert shifted["off_view"] == pytest.approx(27 / 196) and shifted["coverage"] == pytest.approx((13 / 14) ** 2)


def _names() -> set[str]:
    return {
        f"{kind}_{metric}_{fit}"
        for kind in ("global", "local")
        for metric in ("coverage", "overlap", "on_view")
        for fit in ("minmax", "minmax_axes")
    } | {"attention_mask_cost"}


def test_sub_command_on_the_template(tmp_path: Path) -> None:
    output = tmp_path / "geometry.json"
    assert main(["token-geometry", *TINY, "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    assert {fig["name"] for fig in result["figures"]} == _names()
    assert result["landmarks"] == "mediapipe196 template"
    for fit, kinds in result["options"].items():
        for values in kinds.values():
            assert 0 < values["coverage"] <= 1 and values["overlap"] >= 1 and 0 <= values["off_view"] < 1, fit
    # Min-max puts every centre on the crop but the lowest coordinate, at -0.5 (the released range).
    assert result["options"]["minmax"]["global"]["off_view"] < 2 / 196 < result["options"]["none"]["global"]["off_view"]
    assert 0 < result["timed_tokens_masked"] < 1


def test_sub_command_on_a_landmark_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    template = get_landmark_set("mediapipe196").template
    info = CacheInfo(dataset="d", num_images=3, landmark_set="mediapipe196", image_size=112, detector="test")
    cache = LandmarkCache.create(tmp_path / "cache", info)
    cache.write(np.arange(3), np.stack([template, template * 0.5 + 20, template]), np.array([True, True, False]))
    cache.flush()
    output = tmp_path / "geometry.json"
    assert main(["token-geometry", *TINY, "--landmarks", str(tmp_path / "cache"), "--json", str(output)]) == 0
    assert json.loads(output.read_text())["landmarks"] == str(tmp_path / "cache")
    wrong = CacheInfo(dataset="d", num_images=1, landmark_set="mediapipe49", image_size=112, detector="test")
    LandmarkCache.create(tmp_path / "other", wrong).flush()
    capsys.readouterr()
    assert main(["token-geometry", *TINY, "--landmarks", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "landmark set mediapipe49" in err and err.count("\n") == 1
