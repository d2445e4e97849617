"""Data at scale: opening, holding and reading a ``.rec`` of millions of records, per process and per worker.

A synthetic insightface-layout ``.rec`` of ``--records`` tiny PNG faces (10 per identity) and a complete landmark
cache for it are written into a scratch folder (removed afterwards unless ``--keep``). The landmark array is left
sparse (zeros on disk cost nothing): the figures are about the index and the lookups, not about pixels.

Candidate: `open_dataset` as training opens it, the ``.rec`` index cached once and memory-mapped
(`lafs.data.index_cache`); its first open, which builds the cache, is timed apart. Reference: the same with the index
parsed into each process (``MAP_INDEX_FROM_BYTES`` out of reach), as every open did before the cache. Each side runs
in a fresh spawned process: open, ``--reads`` random items (record read + PNG decode + resize + landmark lookup),
then ``--workers`` spawned processes, each handed the pickled dataset (what a DataLoader with spawn does) and reading
``--reads`` items. Reads/s is measured apart, both sides open in one process and timed in interleaved blocks of
``--reads / --repeats`` items (after ``--warmup`` blocks each), so that the machine's noise hits both.

Memory is the growth of anonymous memory (heap: what no other process can share and the kernel cannot drop) from
/proc/self/smaps_rollup, so Linux only; RSS growth, which also counts touched pages of mapped files (shared,
reclaimable page cache), is in the JSON.
"""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from lafs.data import recordio
from lafs.data.open import open_dataset
from lafs.data.recordio import write_face_rec
from lafs.errors import ConfigError
from lafs.landmarks.cache import CacheInfo, LandmarkCache
from tools.benchmarks.common import IMAGE_SIZE, figure, result, time_side_by_side

LANDMARK_SET = "mediapipe196"  # LAFS's set: the largest landmark cache per record
PER_IDENTITY = 10
SMAPS = Path("/proc/self/smaps_rollup")  # Linux: the process's memory by kind
_MIB = 1 << 20


def bench_scale(
    encoder: str = "",
    batch: int = 0,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    records: int = 10_000_000,
    reads: int = 20_000,
    workers: int = 2,
    folder: Path | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Open time, anonymous memory per process and per spawned worker, and random reads/s: mapped vs parsed index."""
    if not SMAPS.is_file():
        raise ConfigError("the scale benchmark reads /proc/self/smaps_rollup: Linux only")
    scratch = Path(tempfile.mkdtemp(prefix="lafs-bench-scale-", dir=folder))
    try:
        start = time.perf_counter()
        rec, cache = _write_data(scratch, records)
        write_seconds = time.perf_counter() - start
        # A fresh process per run: nothing of one side's memory in the other's figures
        build = _in_fresh_process(_open_once, rec, cache, True)
        candidate = _in_fresh_process(_measure, rec, cache, True, reads, workers)
        reference = _in_fresh_process(_measure, rec, cache, False, reads, workers)
        reads_per_s = _in_fresh_process(_reads_side_by_side, rec, cache, reads, repeats, warmup)
        index_cache = rec.with_name(rec.name + ".lafs-index")
        sizes = {
            "rec_bytes": rec.stat().st_size,
            "idx_bytes": rec.with_suffix(".idx").stat().st_size,
            "index_cache_bytes": sum(p.stat().st_size for p in index_cache.rglob("*") if p.is_file()),
        }
    finally:
        if keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch)
    figures = [
        figure("open_seconds", candidate["open_seconds"], reference["open_seconds"], "s", 0.1, False),
        figure("process_anonymous_mib", candidate["anon_mib"], reference["anon_mib"], "MiB", 0.1, False),
        figure("worker_anonymous_mib", candidate["worker_anon_mib"], reference["worker_anon_mib"], "MiB", 0.1, False),
        figure("random_reads_per_s", reads_per_s[0], reads_per_s[1], "items/s", 0.9, True),
    ]
    return result(
        "scale", "", 0, repeats, warmup, torch.device("cpu"), figures,
        records=records, reads=reads, workers=workers, write_seconds=write_seconds,
        first_open_seconds=build["open_seconds"], candidate=candidate, reference=reference, **sizes,
    )  # fmt: skip


def _write_data(scratch: Path, records: int) -> tuple[Path, Path]:
    """A ``.rec`` of ``records`` identical tiny PNGs, 10 per identity, and a complete sparse landmark cache."""
    png = cv2.imencode(".png", np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
    rec = scratch / "faces.rec"
    write_face_rec(rec, ((png, i // PER_IDENTITY) for i in range(records)))
    info = CacheInfo(str(rec), records, LANDMARK_SET, IMAGE_SIZE, "none (benchmark: zeros)")
    landmarks = LandmarkCache.create(scratch / "landmarks", info)
    landmarks.found[:] = True  # every face found at (0, 0): only the lookup is measured
    landmarks.done[:] = True
    landmarks.flush()
    return rec, scratch / "landmarks"


def _spawned(workers: int) -> ProcessPoolExecutor:
    """Spawned (not forked) processes, which may start their own: what a DataLoader with spawn workers does."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    with _spawned(1) as pool:
        return pool.submit(function, *args).result()


def _anonymous_and_rss_mib() -> tuple[float, float]:
    fields = {}
    for line in SMAPS.read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024  # kB
    return fields["Anonymous"], fields["Rss"]


def _open(rec: Path, cache: Path, mapped: bool) -> Any:
    # This spawned process only: map the index whatever its size, or parse it as every open did before the cache
    recordio.MAP_INDEX_FROM_BYTES = 0 if mapped else 1 << 62
    return open_dataset(rec, landmarks=str(cache), landmark_set=LANDMARK_SET, image_size=IMAGE_SIZE)


def _open_once(rec: Path, cache: Path, mapped: bool) -> dict[str, float]:
    start = time.perf_counter()
    _open(rec, cache, mapped)
    return {"open_seconds": time.perf_counter() - start}


def _read(dataset: Any, reads: int, seed: int) -> None:
    """``reads`` random items (what a worker touches in that many reads; timed apart, in `_reads_side_by_side`)."""
    for i in np.random.default_rng(seed).integers(0, len(dataset), reads).tolist():
        dataset[i]


def _reads_side_by_side(rec: Path, cache: Path, reads: int, repeats: int, warmup: int) -> tuple[float, float]:
    """Random items/s of both sides opened in one process, timed in interleaved blocks of ``reads / repeats``."""
    torch.set_num_threads(1)
    sides = [_open(rec, cache, mapped=True), _open(rec, cache, mapped=False)]
    block = max(1, reads // repeats)
    # Other items for each side, a new block each time: with the same items, the side timed second would find the
    # records and landmarks the first just read in the page cache
    draws = [np.random.default_rng(0), np.random.default_rng(1)]

    def read_block(side: int) -> Callable[[], None]:
        def run() -> None:
            for i in draws[side].integers(0, len(sides[side]), block).tolist():
                sides[side][i]

        return run

    seconds = time_side_by_side(read_block(0), read_block(1), repeats, warmup, torch.device("cpu"))
    return block / seconds[0], block / seconds[1]


def _measure(rec: Path, cache: Path, mapped: bool, reads: int, workers: int) -> dict[str, float]:
    torch.set_num_threads(1)
    anon, rss = _anonymous_and_rss_mib()
    start = time.perf_counter()
    dataset = _open(rec, cache, mapped)
    open_seconds = time.perf_counter() - start
    _read(dataset, reads, seed=0)
    anon_after, rss_after = _anonymous_and_rss_mib()
    payload = pickle.dumps(dataset)
    with _spawned(workers) as pool:
        per_worker = list(pool.map(_worker, [payload] * workers, [reads] * workers, range(1, workers + 1)))
    return {
        "open_seconds": open_seconds,
        "anon_mib": anon_after - anon,
        "rss_mib": rss_after - rss,
        "pickled_mib": len(payload) / _MIB,
        "worker_anon_mib": max(w["anon_mib"] for w in per_worker),
        "worker_rss_mib": max(w["rss_mib"] for w in per_worker),
    }


def _worker(payload: bytes, reads: int, seed: int) -> dict[str, float]:
    """What one spawned DataLoader worker holds: the dataset it is handed, after ``reads`` random items."""
    torch.set_num_threads(1)
    anon, rss = _anonymous_and_rss_mib()
    dataset = pickle.loads(payload)  # the bytes themselves arrived before the first reading
    _read(dataset, reads, seed)
    anon_after, rss_after = _anonymous_and_rss_mib()
    return {"anon_mib": anon_after - anon, "rss_mib": rss_after - rss}
