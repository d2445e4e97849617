"""MediaPipe landmarks of a fixed evaluation set (a ``.bin``, an IJB set), computed once and cached in one file.

    lfw.bin.landmarks-mediapipe196.npz   (beside the set file it describes)
        landmarks  (N, K, 2) float32, fractions of each image's width and height (MediaPipe's normalised
                   coordinates, so one cache serves every model input size: pixels = fraction * size)
        found      (N,) bool, MediaPipe found a face (else the landmarks are zeros and the template stands in)
        meta       JSON: format, version, landmark set and source, detector, image count, SHA-256 of the set file

A cache is used only when its meta matches the set (image count, hash of the set file, landmark set); one that does
not is recomputed, with a warning. The file is written atomically beside the set when that folder is writable, else
into the fallback folder the caller names (its output folder), and the log says so. A file at the cache's name that
is not such a cache was not written here: it is left alone and the cache goes to the fallback folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lafs.files import write_atomic
from lafs.landmarks.extract import ImageSource, landmark_workers, mediapipe_detector
from lafs.landmarks.sets import get_landmark_set
from lafs.progress import progress_bar

SET_CACHE_FORMAT = "lafs-set-landmarks"
SET_CACHE_VERSION = 1
CHUNK_SIZE = 32  # images per task handed to a worker
logger = logging.getLogger("lafs.landmarks")


@dataclass
class SetLandmarks:
    """MediaPipe landmarks of every image of a set, and where they were cached."""

    landmarks: np.ndarray  # (N, K, 2) float32, fractions of the image's width and height
    found: np.ndarray  # (N,) bool: MediaPipe found a face
    path: Path | None  # the cache file read or written; None when no folder could take it
    computed: bool  # computed by this call (False: read from the cache)

    @property
    def missed(self) -> int:
        """Images where MediaPipe found no face (they get the template)."""
        return int(np.count_nonzero(~self.found))

    def pixels(self, size: int, template: np.ndarray) -> np.ndarray:
        """Landmarks (N, K, 2) float32 in pixels of ``size`` x ``size`` images; ``template`` (K, 2) pixels of that
        size stands in for images without a face."""
        points = self.landmarks * np.float32(size)
        points[~self.found] = template
        return points.astype(np.float32, copy=False)


def set_cache_path(set_file: str | os.PathLike[str], landmark_set: str) -> Path:
    """Where the cache of ``set_file``'s landmarks lives: ``<set_file>.landmarks-<landmark_set>.npz`` beside it."""
    set_file = Path(set_file)
    return set_file.with_name(f"{set_file.name}.landmarks-{landmark_set}.npz")


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(path: Path, expected: dict[str, Any]) -> tuple[str, SetLandmarks | None]:
    """("missing" | "foreign" | "stale: why" | "ok", the landmarks when ok) of the cache file ``path``."""
    if not path.exists():
        return "missing", None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            landmarks, found = np.asarray(data["landmarks"]), np.asarray(data["found"])
    except (OSError, ValueError, KeyError):
        return "foreign", None
    if not isinstance(meta, dict) or meta.get("format") != SET_CACHE_FORMAT:
        return "foreign", None
    if meta.get("version") != SET_CACHE_VERSION:
        return f"stale: version {meta.get('version')}, this program writes {SET_CACHE_VERSION}", None
    for key, value in expected.items():
        if meta.get(key) != value:
            return f"stale: {key} is {meta.get(key)!r}, the set's is {value!r}", None
    k = get_landmark_set(expected["landmark_set"]).num_landmarks
    if landmarks.shape != (expected["num_images"], k, 2) or found.shape != (expected["num_images"],):
        return f"stale: arrays of shape {landmarks.shape} and {found.shape}", None
    return "ok", SetLandmarks(landmarks.astype(np.float32), found.astype(bool), path, computed=False)


def _compute(images: ImageSource, num_images: int, landmark_set: str, workers: int) -> tuple[np.ndarray, np.ndarray]:
    k = get_landmark_set(landmark_set).num_landmarks
    landmarks = np.zeros((num_images, k, 2), dtype=np.float32)
    found = np.zeros(num_images, dtype=bool)
    chunks = [list(range(i, min(i + CHUNK_SIZE, num_images))) for i in range(0, num_images, CHUNK_SIZE)]
    workers = max(1, min(workers, len(chunks)))
    # image_size=1: the extractor scales MediaPipe's points to fractions of each image's size.
    with (
        landmark_workers(images, landmark_set, 1, workers) as run,
        progress_bar(total=num_images, desc="MediaPipe landmarks", unit="img") as bar,
    ):
        for indices, points, hits in run(chunks):
            landmarks[indices], found[indices] = points, hits
            bar.update(len(indices))
    return landmarks, found


def _write(path: Path, landmarks: np.ndarray, found: np.ndarray, meta: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, landmarks=landmarks, found=found, meta=np.array(json.dumps(meta)))
    write_atomic(path, buffer.getvalue())


def set_landmarks(
    set_file: str | os.PathLike[str],
    images: ImageSource,
    num_images: int,
    landmark_set: str,
    workers: int = 1,
    fallback_dir: str | os.PathLike[str] | None = None,
) -> SetLandmarks:
    """MediaPipe landmarks of the ``num_images`` images of the set stored in ``set_file``, from its cache or computed.

    ``images`` is what the extractor's workers read (`lafs.landmarks.extract.ImageSource`): item ``i`` must be image
    ``i`` of the set, as the consumer will embed it (e.g. aligned). ``workers`` processes run MediaPipe. The cache
    (`set_cache_path`) is written beside ``set_file`` or, when that folder cannot take it, in ``fallback_dir``.
    """
    set_file = Path(set_file)
    expected = {"landmark_set": landmark_set, "num_images": num_images, "sha256": file_digest(set_file)}
    primary = set_cache_path(set_file, landmark_set)
    fallback = None if fallback_dir is None else Path(fallback_dir) / primary.name
    targets: list[Path] = []  # where a computed cache may go, in order
    for path in (primary, fallback):
        if path is None:
            continue
        status, cached = _read(path, expected)
        if cached is not None:
            return cached
        if status == "foreign":
            logger.warning(f"warning: {path}: exists and is not a landmark cache written here; leaving it alone")
            continue
        if status.startswith("stale"):
            why = status.removeprefix("stale: ")
            logger.warning(f"warning: {path}: landmark cache does not match {set_file.name} ({why}); recomputing")
        targets.append(path)
    landmarks, found = _compute(images, num_images, landmark_set, workers)
    meta = {"format": SET_CACHE_FORMAT, "version": SET_CACHE_VERSION, **expected}
    meta |= {"landmark_source": "mediapipe", "detector": mediapipe_detector(), "set_file": str(set_file)}
    for path in targets:
        try:
            _write(path, landmarks, found, meta)
        except OSError as error:
            logger.warning(f"warning: {path.parent}: cannot write the landmark cache there ({error.strerror or error})")
            continue
        if path != primary:
            logger.warning(f"warning: landmark cache of {set_file.name} written to {path}, not beside the set")
        return SetLandmarks(landmarks, found, path, computed=True)
    logger.warning(f"warning: landmarks of {set_file} computed but cached nowhere: the next run computes them again")
    return SetLandmarks(landmarks, found, None, computed=True)
