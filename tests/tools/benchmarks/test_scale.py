"""tools.benchmark scale at a tiny size: both sides run in fresh processes and the mapped side holds no arrays."""

from __future__ import annotations

from pathlib import Path

import pytest

from lafs.errors import ConfigError
from tools.benchmarks import scale
from tools.benchmarks.scale import bench_scale


def test_scale_figures_at_a_tiny_size(tmp_path: Path) -> None:
    result = bench_scale(records=3000, reads=20, workers=1, folder=tmp_path)
    figures = {fig["name"]: fig for fig in result["figures"]}
    assert set(figures) == {"open_seconds", "process_anonymous_mib", "worker_anonymous_mib", "random_reads_per_s"}
    candidate, reference = result["candidate"], result["reference"]
    # The reference pickles the keys, offsets and labels (3 x 3000 x 8 B) and the reader's four arrays (4 x 3330 x
    # 8 B, the identity records and the header included); the mapped side sends folder names.
    assert reference["pickled_mib"] * (1 << 20) > 3000 * 8 * 3 + 3301 * 8 * 4
    assert candidate["pickled_mib"] * (1 << 20) < 4000
    assert result["index_cache_bytes"] > 3000 * 8 * 3 and result["records"] == 3000
    timed = [figures["open_seconds"], figures["random_reads_per_s"]]
    assert all(fig["candidate"] > 0 and fig["reference"] > 0 for fig in timed)
    assert list(tmp_path.iterdir()) == []  # the scratch data is removed


def test_scale_is_refused_off_linux(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(scale, "SMAPS", tmp_path / "no-proc")
    with pytest.raises(ConfigError, match="Linux only"):
        bench_scale(records=10, folder=tmp_path)
