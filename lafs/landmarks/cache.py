"""On-disk landmark cache keyed by dataset index: computed once per dataset, memory-mapped by every training process.

A cache is a folder:

    landmarks.npy   (N, K, 2) float32, pixels of the model's image_size x image_size input (pixel j spans [j, j+1))
    found.npy       (N,) bool, the detector found a face (else the landmarks are zeros and must not be used)
    done.npy        (N,) bool, the image has been processed (what a resumed or sharded run skips)
    meta.json       format, landmark set, image size, detector and landmark source, source dataset, shard, counts

Writes go to the memory maps in place and ``done`` is flushed only after the landmarks it vouches for, so a
killed run loses at most the images since its last flush and never marks an image done without its landmarks.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lafs.errors import DataError
from lafs.files import read_json, write_atomic
from lafs.landmarks.sets import get_landmark_set

logger = logging.getLogger("lafs.landmarks")
CACHE_FORMAT = "lafs-landmark-cache"
CACHE_VERSION = 1
_ARRAYS = ("landmarks", "found", "done")
META_FILE = "meta.json"  # the file that makes a folder a landmark cache


@dataclass
class CacheInfo:
    """What a cache was computed from, and how far it got."""

    dataset: str  # the dataset path it was computed from (informational: caches are keyed by index, not path)
    num_images: int
    landmark_set: str
    image_size: int
    detector: str  # e.g. "mediapipe 0.10.14 face_mesh"
    shard_index: int = 0
    shard_count: int = 1
    processed: int = 0
    found: int = 0
    # Which landmark source made it (`lafs.landmarks.provenance`); what an encoder trained on it records. Caches
    # written before this field have none and were all made by MediaPipe (tools/landmarks.py, the only writer then).
    landmark_source: str = "mediapipe"


def shard_range(num_images: int, shard_index: int, shard_count: int) -> range:
    """Contiguous block of indices for shard i of n (contiguous keeps .rec reads sequential)."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard {shard_index} of {shard_count} does not exist")
    return range(num_images * shard_index // shard_count, num_images * (shard_index + 1) // shard_count)


class LandmarkCache:
    """A landmark cache folder, opened read-only (training) or for writing (extraction)."""

    def __init__(self, path: Path, info: CacheInfo, arrays: dict[str, np.memmap]) -> None:
        self.path, self.info = path, info
        self.landmarks, self.found, self.done = (arrays[name] for name in _ARRAYS)
        self._pending = np.empty(0, np.int64)  # written since the last flush, not yet marked done
        self._warned = False  # about unusable landmarks, once

    @classmethod
    def open(cls, path: str | os.PathLike[str], writable: bool = False) -> LandmarkCache:
        """Open an existing cache; a missing or inconsistent one is a one-line `DataError`."""
        path = Path(path).absolute()  # a read-only cache pickles as its path: a worker in another cwd must find it
        meta_path = path / META_FILE
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a landmark cache ({meta_path.name}: {exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise DataError(f"{path}: not a version {CACHE_VERSION} {CACHE_FORMAT}")
        try:
            info = CacheInfo(**meta["info"])
            arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r+" if writable else "r") for name in _ARRAYS}
        except (KeyError, TypeError, OSError, ValueError) as exc:
            raise DataError(f"{path}: damaged landmark cache ({exc})") from None
        k = get_landmark_set(info.landmark_set).num_landmarks
        expected = {"landmarks": (info.num_images, k, 2), "found": (info.num_images,), "done": (info.num_images,)}
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise DataError(f"{path}: {name}.npy has shape {arrays[name].shape}, meta.json says {shape}")
        return cls(path, info, arrays)

    @classmethod
    def create(cls, path: str | os.PathLike[str], info: CacheInfo) -> LandmarkCache:
        """Create an empty cache, or reopen one made with the same settings (to resume it)."""
        path = Path(path)
        if (path / META_FILE).exists():
            cache = cls.open(path, writable=True)
            theirs, ours = asdict(cache.info), asdict(info)
            for key in ("num_images", "landmark_set", "image_size", "shard_index", "shard_count", "landmark_source"):
                if theirs[key] != ours[key]:
                    raise DataError(f"{path}: existing cache has {key}={theirs[key]}, this run asks for {ours[key]}")
            return cache
        path.mkdir(parents=True, exist_ok=True)
        k = get_landmark_set(info.landmark_set).num_landmarks
        shapes = {"landmarks": ((info.num_images, k, 2), np.float32), "found": ((info.num_images,), np.bool_)}
        shapes["done"] = ((info.num_images,), np.bool_)
        arrays = {
            name: np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in shapes.items()
        }
        cache = cls(path, info, arrays)
        cache.flush()
        return cache

    def __getstate__(self) -> dict[str, object]:
        # A read-only cache travels to spawned workers as its path and is mapped again there: pickling the arrays
        # would copy gigabytes of landmarks into every worker.
        state = dict(self.__dict__)
        if isinstance(self.landmarks, np.memmap) and self.landmarks.mode == "r":
            for name in _ARRAYS:
                del state[name]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if "landmarks" not in state:
            mapped = LandmarkCache.open(self.path)
            self.landmarks, self.found, self.done = mapped.landmarks, mapped.found, mapped.done

    @property
    def num_landmarks(self) -> int:
        return self.landmarks.shape[1]

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def write(self, indices: np.ndarray, landmarks: np.ndarray, found: np.ndarray) -> None:
        """Store results for ``indices`` (n,): landmarks (n, K, 2) pixels, found (n,); marked done at `flush`."""
        self.landmarks[indices] = landmarks
        self.found[indices] = found
        self._pending = np.concatenate([self._pending, indices])

    def flush(self) -> None:
        """Persist written landmarks, then mark them done, then update the counts in meta.json."""
        self.landmarks.flush()
        self.found.flush()
        if len(self._pending):
            self.done[self._pending] = True
            self.done.flush()
            self._pending = np.empty(0, np.int64)
        self.info.processed = int(np.count_nonzero(self.done))
        self.info.found = int(np.count_nonzero(self.found & self.done))
        self._write_meta()

    def lookup(self, index: int) -> tuple[np.ndarray, bool]:
        """Landmarks (K, 2) float32 of dataset item ``index`` and whether a face was found (False if not done).

        Points that are not finite or lie more than an image's size outside the image (a damaged or foreign cache:
        no detector puts them there) count as not found, with a warning the first time: training on them would
        crop nonsense or turn every loss NaN.
        """
        landmarks = np.array(self.landmarks[index], dtype=np.float32)
        found = bool(self.done[index] and self.found[index])
        size = self.info.image_size
        if found and not (np.isfinite(landmarks).all() and (np.abs(landmarks - size / 2) <= 1.5 * size).all()):
            if not self._warned:
                logger.warning(f"warning: {self.path}: landmarks of image {index} are not finite or lie far outside "
                               "the image; such faces are treated as not found")  # fmt: skip
                self._warned = True
            found = False
        return landmarks, found

    def _write_meta(self) -> None:
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "info": asdict(self.info)}
        write_atomic(self.path / META_FILE, json.dumps(meta, indent=2) + "\n")


def merge_caches(shards: list[str | os.PathLike[str]], output: str | os.PathLike[str]) -> LandmarkCache:
    """Combine shard caches of one dataset into one complete cache at ``output``."""
    if not shards:
        raise DataError("no shard caches to merge")
    opened = [LandmarkCache.open(s) for s in shards]
    first = opened[0].info
    for cache in opened[1:]:
        for key in ("num_images", "landmark_set", "image_size", "landmark_source"):
            if getattr(cache.info, key) != getattr(first, key):
                raise DataError(f"{cache.path}: {key}={getattr(cache.info, key)} differs from {opened[0].path}")
    info = CacheInfo(
        first.dataset,
        first.num_images,
        first.landmark_set,
        first.image_size,
        first.detector,
        landmark_source=first.landmark_source,
    )
    merged = LandmarkCache.create(output, info)
    for cache in opened:
        indices = np.flatnonzero(cache.done)
        merged.write(indices, cache.landmarks[indices], cache.found[indices])
    merged.flush()
    if not merged.complete:
        missing = np.flatnonzero(~merged.done)
        raise DataError(
            f"{output}: {len(missing)} images are in no finished shard (first: {missing[0]}); "
            "finish or resume those shards, then merge again"
        )
    return merged
