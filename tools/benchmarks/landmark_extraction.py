"""Landmark extraction figures: MediaPipe images/s in one process, and the speed-up of a pool of worker processes.

The runs go through the extraction path of `tools.landmarks` (`lafs.landmarks.extract`): its worker initialiser and
chunk function, its forkserver pool, a fresh `LandmarkCache` per run. What is timed is one pass over the synthetic
JPEG folder once every worker is started (MediaPipe start-up, seconds, is not timed): decoding, MediaPipe and the
cache writes, as the tool's "img/s once running" means. Each worker gets the same share of equal chunks, so a run
ends with no worker idle waiting for another's last chunk.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lafs.data.open import open_dataset
from lafs.landmarks import extract
from lafs.landmarks.cache import CacheInfo, LandmarkCache
from tools.benchmarks.common import DEFAULT_ENCODER, IMAGE_SIZE, figure, result, write_jpeg_faces

LANDMARK_SET = "mediapipe196"  # the tool's default
MAX_CHUNK = 32  # extract_landmarks' default chunk size
CHUNKS_PER_WORKER = 4  # at least this many, so the pool's dispatch is measured, not one chunk per worker
READY_SECONDS = 300.0  # longest wait for all pool workers to have started MediaPipe

Chunk = list[int]
Mapper = Callable[[Callable[[Chunk], Any], Iterable[Chunk]], Iterator[Any]]

_ready: dict[str, Any] = {}  # in each pool worker: the barrier that says all workers have started


def default_workers() -> int:
    """The cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        return os.cpu_count() or 1


def equal_chunks(count: int, workers: int) -> list[Chunk]:
    """Indices 0..count-1 in a multiple of ``workers`` chunks of near-equal size, none above the tool's 32."""
    per_worker = max(CHUNKS_PER_WORKER, math.ceil(count / (workers * MAX_CHUNK)))
    parts = min(count, workers * per_worker)
    return [part.tolist() for part in np.array_split(np.arange(count), parts)]


def _start_pool_worker(barrier: Any, *start_args: Any) -> None:
    # A barrier can only reach a worker through its start arguments, so it rides along with the tool's initialiser's.
    _ready["barrier"] = barrier
    extract.start_worker(*start_args)


def _wait_for_all(_: int) -> None:
    # A worker blocked here takes no other task: `workers` of these calls need every worker, each one started.
    _ready["barrier"].wait(READY_SECONDS)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _extract_once(mapper: Mapper, chunks: list[Chunk], cache_dir: Path, info: CacheInfo) -> tuple[float, int]:
    """Seconds of one pass over ``chunks`` into a fresh cache (the tool's write loop), and the faces found."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache = LandmarkCache.create(cache_dir, info)
    found = 0
    start = time.perf_counter()
    for indices, landmarks, hits in mapper(extract.process_chunk, chunks):
        cache.write(indices, landmarks, hits)
        found += int(hits.sum())
    cache.flush()
    return time.perf_counter() - start, found


def bench_landmarks(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    images: int = 640,
    workers: int | None = None,
) -> dict[str, Any]:
    """MediaPipe images/s of one process vs bare decoding, and of ``workers`` processes vs one (on the CPU).

    ``encoder``, ``batch`` and ``device`` are not used: MediaPipe runs on the CPU, one image at a time.
    """
    workers = workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="lafs-bench-landmarks-") as tmp:
        folder = write_jpeg_faces(Path(tmp) / "faces", images)
        dataset = open_dataset(folder, image_size=None, landmarks="none")  # what each worker opens
        chunks = equal_chunks(images, workers)
        start_args = (str(folder), False, LANDMARK_SET, IMAGE_SIZE)
        info = CacheInfo(str(folder), images, LANDMARK_SET, IMAGE_SIZE, "benchmark", 0, 1)
        pool = None
        try:
            if workers > 1:
                # As the tool does: workers come from a clean forkserver (MediaPipe's threads do not survive fork),
                # started here before this process holds a detector of its own.
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload([extract.__name__])
                barrier = context.Barrier(workers)
                pool = context.Pool(workers, initializer=_start_pool_worker, initargs=(barrier, *start_args))
                pool.map(_wait_for_all, range(workers), chunksize=1)
                many: Mapper = pool.imap_unordered
            else:
                many = map  # the tool runs one worker in its own process, as the one-process side does
            extract.start_worker(*start_args)  # the one-process side: the tool's workers=1 path

            def decode() -> None:
                for index in range(images):
                    dataset.load(index)

            sides: dict[str, Callable[[], tuple[float, int]]] = {
                "one": lambda: _extract_once(map, chunks, Path(tmp) / "cache", info),
                "many": lambda: _extract_once(many, chunks, Path(tmp) / "cache", info),
                "decode": lambda: (_timed(decode), 0),
            }
            for _ in range(warmup):
                for run in sides.values():
                    run()
            times: dict[str, list[float]] = {name: [] for name in sides}
            found = {name: 0 for name in sides}
            for _ in range(repeats):  # interleaved, so shared-machine noise hits every side
                for name, run in sides.items():
                    seconds, found[name] = run()
                    times[name].append(seconds)
            if pool is not None:
                pool.close()
                pool.join()
        finally:
            if pool is not None:
                pool.terminate()
            extract.stop_worker()
    one, many_rate, decoded = (images / statistics.median(times[name]) for name in ("one", "many", "decode"))
    figures = [
        figure("mediapipe_per_process", one, decoded, "images/s", None, higher_is_better=True),
        figure("mediapipe_scaling", many_rate, one, "images/s", 0.9 * workers, higher_is_better=True),
    ]
    extra = {"images": images, "workers": workers, "chunks": len(chunks), "found": found["one"]}
    return result("landmarks", encoder, batch, repeats, warmup, torch.device("cpu"), figures, **extra)
