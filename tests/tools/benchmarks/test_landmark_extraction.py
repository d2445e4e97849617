"""tools.benchmark landmarks at a tiny size: real MediaPipe in 2 forkserver workers, valid figures (no timings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tools.benchmark import main
from tools.benchmarks.landmark_extraction import equal_chunks

TINY = ["--images", "8", "--workers", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu"]


def test_chunks_are_equal_shares_of_at_most_32() -> None:
    for count, workers in ((8, 2), (600, 2), (1000, 3), (5, 16)):
        chunks = equal_chunks(count, workers)
        assert sorted(i for chunk in chunks for i in chunk) == list(range(count))
        sizes = [len(chunk) for chunk in chunks]
        assert max(sizes) <= 32 and max(sizes) - min(sizes) <= 1
        assert len(chunks) % workers == 0 or len(chunks) == count


def test_landmarks_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "landmarks.json"
    assert main(["landmarks", *TINY, "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["command"] == "landmarks" and result["device"] == "cpu"
    assert result["images"] == 8 and result["workers"] == 2
    assert 0 < result["found"] <= 8  # MediaPipe finds the synthetic faces
    figures = {fig["name"]: fig for fig in result["figures"]}
    assert set(figures) == {"mediapipe_per_process", "mediapipe_scaling"}
    printed = capsys.readouterr().out
    for fig in figures.values():
        for key in ("candidate", "reference", "ratio"):
            assert math.isfinite(fig[key]) and fig[key] > 0
        assert fig["ratio"] == pytest.approx(fig["candidate"] / fig["reference"])
        assert fig["unit"] == "images/s" and f"{fig['name']}: candidate" in printed
    assert figures["mediapipe_per_process"]["target"] is None
    assert figures["mediapipe_scaling"]["target"] == pytest.approx(1.8)  # 0.9 x 2 workers
    # The scaling figure's reference is the one-process rate of the per-process figure.
    assert figures["mediapipe_scaling"]["reference"] == figures["mediapipe_per_process"]["candidate"]
