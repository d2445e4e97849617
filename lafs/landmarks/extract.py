"""Fill a landmark cache by running MediaPipe over a whole dataset in worker processes.

MediaPipe cannot batch and runs on the CPU, so the work is spread over processes, each with its own detector and
its own dataset handle, in chunks of images. Results are flushed every few seconds: a stopped run resumes where it
stopped, and shards of one dataset can run on several machines and be merged (`lafs.landmarks.cache.merge_caches`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from lafs.data.open import open_dataset
from lafs.errors import DataError
from lafs.landmarks.cache import CacheInfo, LandmarkCache, shard_range
from lafs.landmarks.provenance import default_workers
from lafs.landmarks.sources import MediaPipeLandmarks
from lafs.progress import progress_bar

FLUSH_SECONDS = 10.0  # at most this much work is redone after a kill


@dataclass
class ExtractionReport:
    processed: int  # images handled by this run
    found: int  # of those, images where MediaPipe found a face
    remaining: int  # images of this shard still to do (a capped or stopped run)
    seconds: float  # wall time of the run, worker start-up included
    images_per_second: float  # once running: after the workers' start-up (when there are enough chunks) to the end
    cache: LandmarkCache


_worker: dict[str, Any] = {}


def mediapipe_detector() -> str:
    """How the landmarks were detected, as caches record it: e.g. "mediapipe 0.10.14 solutions.face_mesh"."""
    return f"mediapipe {version('mediapipe')} solutions.face_mesh"


# What a worker reads its images from: a dataset path (`open_dataset`), or a picklable callable returning an object
# with ``__len__`` and ``load(index) -> {"image": H x W x 3 uint8 RGB, ...}`` (a .bin's or an IJB set's faces).
ImageSource = str | Callable[[], Any]
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]  # indices (n,), landmarks (n, K, 2), found (n,)


def start_worker(images: ImageSource, bgr: bool, landmark_set: str, image_size: int) -> None:
    """Open this process's dataset handle and MediaPipe detector (a pool initialiser, or the one-process path)."""
    if isinstance(images, str):
        _worker["dataset"] = open_dataset(images, bgr=bgr, image_size=None, landmarks="none")
    else:
        _worker["dataset"] = images()
    _worker["source"] = MediaPipeLandmarks(landmark_set)
    _worker["image_size"] = image_size


def process_chunk(indices: list[int]) -> Chunk:
    """Landmarks (n, K, 2) in model pixels and found flags (n,) for dataset items ``indices``."""
    dataset, source, size = _worker["dataset"], _worker["source"], _worker["image_size"]
    landmarks = np.zeros((len(indices), len(source.mesh_indices), 2), dtype=np.float32)
    found = np.zeros(len(indices), dtype=bool)
    for row, index in enumerate(indices):
        try:
            image = dataset.load(index)["image"]
        except DataError:  # an unreadable record: no landmarks, counted as not found
            continue
        points, valid = source(image)
        if valid.all():
            scale = np.array([size / image.shape[1], size / image.shape[0]], dtype=np.float32)
            landmarks[row], found[row] = points * scale, True
    return np.asarray(indices, dtype=np.int64), landmarks, found


def stop_worker() -> None:
    """Close this process's detector and forget its dataset (after the one-process path)."""
    if "source" in _worker:
        _worker.pop("source").close()
    _worker.clear()


@contextlib.contextmanager
def landmark_workers(
    images: ImageSource, landmark_set: str, image_size: int, workers: int = 1, bgr: bool = False
) -> Iterator[Callable[[list[list[int]]], Iterator[Chunk]]]:
    """A function mapping chunks of indices to their `process_chunk` results (in any order), run by ``workers``
    processes (each with its own detector and images) or, with one, in this process; they stop on leaving."""
    start_args = (images, bgr, landmark_set, image_size)
    if workers <= 1:
        start_worker(*start_args)
        try:
            yield lambda chunks: map(process_chunk, chunks)
        finally:
            stop_worker()
        return
    # MediaPipe's threads do not survive fork(): workers come from a clean forkserver, never from this process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pool = context.Pool(workers, initializer=start_worker, initargs=start_args)
    try:
        yield lambda chunks: pool.imap_unordered(process_chunk, chunks)
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def extract_landmarks(
    dataset_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    landmark_set: str = "mediapipe196",
    image_size: int = 112,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    bgr: bool = False,
    chunk_size: int = 32,
    max_images: int | None = None,
    progress: bool = True,
) -> ExtractionReport:
    """Compute (or resume) the landmark cache of shard ``(i, n)`` of a dataset; ``max_images`` caps this run."""
    num_images = len(open_dataset(dataset_path, bgr=bgr, image_size=None, landmarks="none"))
    info = CacheInfo(str(dataset_path), num_images, landmark_set, image_size, mediapipe_detector(), *shard)
    cache = LandmarkCache.create(output, info)
    block = shard_range(num_images, *shard)
    todo = [i for i in block if not cache.done[i]][:max_images]
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    # Pool workers start inside the timed loop: the rate counts from the workers-th returned chunk, about when every
    # worker has started. (The one-process path starts its detector before the loop.)
    warm_results = min(workers, len(chunks)) if workers > 1 else 0
    processed = found = first_chunk = results_seen = 0
    bar = progress_bar(total=len(todo), desc=f"landmarks -> {Path(output).name}", unit="img", enabled=progress)
    with landmark_workers(str(dataset_path), landmark_set, image_size, workers, bgr) as run:
        start = last_flush = first_time = time.perf_counter()
        try:
            for indices, landmarks, hits in run(chunks):
                results_seen += 1
                if results_seen <= warm_results:
                    first_chunk, first_time = first_chunk + len(indices), time.perf_counter()
                cache.write(indices, landmarks, hits)
                processed, found = processed + len(indices), found + int(hits.sum())
                bar.update(len(indices))
                bar.set_postfix(found=f"{found / processed:.1%}")
                if time.perf_counter() - last_flush > FLUSH_SECONDS:
                    cache.flush()
                    last_flush = time.perf_counter()
        finally:
            cache.flush()
            bar.close()
    end = time.perf_counter()
    remaining = int(np.count_nonzero(~cache.done[block.start : block.stop]))
    if processed > first_chunk and end > first_time:
        rate = (processed - first_chunk) / (end - first_time)
    else:  # too few chunks to leave the start-up out
        rate = processed / (end - start) if end > start else 0.0
    return ExtractionReport(processed, found, remaining, end - start, rate, cache)


AUTO = "mediapipe"  # data.landmarks=mediapipe: the run finds or computes the dataset's MediaPipe cache itself


def cache_locations(
    dataset_path: str | os.PathLike[str], landmark_set: str, image_size: int, fallback_dir: Path
) -> list[Path]:
    """Where a dataset's own MediaPipe cache may live, the place a new one goes first: beside the data
    (``<path>.landmarks-<set>-<size>``, shared by every run on it) when that folder is writable, else in
    ``fallback_dir`` (a run directory)."""
    path = Path(dataset_path)
    beside = path.parent / f"{path.name}.landmarks-{landmark_set}-{image_size}"
    fallback = fallback_dir / f"landmarks-{landmark_set}-{image_size}"
    return [beside, fallback] if os.access(path.parent, os.W_OK) else [fallback, beside]


def complete_landmark_cache(
    dataset_path: str | os.PathLike[str], landmark_set: str, image_size: int, fallback_dir: Path
) -> Path | None:
    """An existing complete cache of the dataset in either `cache_locations` place, else None."""
    for folder in cache_locations(dataset_path, landmark_set, image_size, fallback_dir):
        if (folder / "meta.json").is_file() and LandmarkCache.open(folder).complete:
            return folder
    return None


def dataset_landmark_cache(
    dataset_path: str | os.PathLike[str],
    landmark_set: str,
    image_size: int,
    fallback_dir: Path,
    bgr: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The complete MediaPipe landmark cache of a dataset: an existing one (`cache_locations`: beside the data or
    in ``fallback_dir``), or computed now in ``workers`` processes (default: every core), with progress, resuming an
    interrupted one (where it was started; a new one beside the data when that folder is writable). Returns it."""
    found = complete_landmark_cache(dataset_path, landmark_set, image_size, fallback_dir)
    if found is not None:
        return found
    places = cache_locations(dataset_path, landmark_set, image_size, fallback_dir)
    started = [f for f in places if (f / "meta.json").is_file() and os.access(f, os.W_OK)]
    folder = started[0] if started else places[0]
    workers = workers or default_workers()
    log(f"data.landmarks=mediapipe: computing the {landmark_set} landmarks of {dataset_path} once -> {folder} "
        f"({workers} processes; an interrupted run resumes)")  # fmt: skip
    report = extract_landmarks(dataset_path, folder, landmark_set, image_size, workers=workers, bgr=bgr)
    log(f"landmarks: MediaPipe found a face in {report.cache.info.found} of {report.cache.info.num_images} images "
        f"({report.images_per_second:.0f} images/s); the others get the template, marked invalid")  # fmt: skip
    return folder
