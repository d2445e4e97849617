"""Faces as image files: a folder with one sub-folder per identity, or a CSV list file of ``path,label`` rows."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lafs.data.bad_records import BadRecordGuard
from lafs.data.images import read_image_file
from lafs.errors import DataError
from lafs.files import write_atomic

logger = logging.getLogger("lafs.data")
DENSE_LABELS = 100_000  # labels below this are kept as given (a head of that many rows is small), gaps or not
MAX_LABEL = 2**31  # list-file labels are class numbers: int32 is more classes than any face data set has
SIZE_SAMPLE = 100  # images whose size is checked when a folder or list is opened for training
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def scan_image_folder(root: str | os.PathLike[str]) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their labels (N,) and the identity names of ``root/<identity>/<image>``, all sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if images:
            paths += images
            labels += [len(names)] * len(images)
            names.append(folder.name)
    if not paths:
        raise DataError(f"{root}: no images in identity sub-folders (expected {root}/<identity>/<image>.jpg)")
    return paths, np.asarray(labels, dtype=np.int64), names


def read_list_file(path: str | os.PathLike[str]) -> tuple[list[Path], np.ndarray]:
    """Rows ``path,label`` (an optional ``path,label`` header; relative paths are relative to the list file)."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read list file ({exc})") from None
    paths, labels = [], []
    for number, row in enumerate(rows, start=1):
        if not row or row[0].startswith("#") or (number == 1 and [c.strip() for c in row] == ["path", "label"]):
            continue
        label = row[1].strip() if len(row) == 2 else ""
        # isascii: "²" and other Unicode digits pass isdigit but are no number int() reads
        if not (label.isascii() and label.isdigit()) or int(label) >= MAX_LABEL:
            raise DataError(
                f"{path}:{number}: expected 'path,label' with an integer label in [0, {MAX_LABEL}), got {row}"
            )
        paths.append(path.parent / row[0].strip())
        labels.append(int(label))
    if not paths:
        raise DataError(f"{path}: no 'path,label' rows")
    return paths, dense_labels(np.asarray(labels, dtype=np.int64), str(path))


def dense_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """``labels`` as given, unless they are sparse: a label of `DENSE_LABELS` or more and over twice the class count
    would size the classifier by it, so they become 0 .. C-1 in the labels' order, with a warning."""
    classes = np.unique(labels)
    if labels.max() < max(2 * classes.size, DENSE_LABELS):
        return labels
    logger.warning(
        f"{source}: {classes.size} classes labelled up to {int(labels.max())}: renumbered 0 .. {classes.size - 1} in "
        "the labels' order (a head of one row per label number would be mostly empty)"
    )
    return np.searchsorted(classes, labels).astype(np.int64)


def write_list_file(path: str | os.PathLike[str], paths: Sequence[Path], labels: Sequence[int]) -> Path:
    """Write a ``path,label`` list (absolute paths) atomically; returns its path."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "label"])
    writer.writerows((str(Path(p).resolve()), int(label)) for p, label in zip(paths, labels, strict=True))
    return write_atomic(path, text.getvalue())


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Sorted indices keeping ``shots`` random images of every identity (all of those with fewer), seeded."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    groups = np.split(order, starts[1:])
    chosen = [g if len(g) <= shots else rng.choice(g, size=shots, replace=False) for g in groups]
    return np.sort(np.concatenate(chosen))


def warn_if_not_square(paths: Sequence[Path], source: str, image_size: int, sample: int = SIZE_SAMPLE) -> int:
    """Warn when images of a training set are not square, as aligned crops are (they would be squashed to
    ``image_size``); returns how many of an evenly spread sample of ``sample`` are not. Only the files' headers are
    read (Pillow), so a million images cost a sample's worth."""
    picks: list[int] = []
    if paths:
        picks = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), sample)).astype(int)).tolist()
    odd = []
    for i in picks:
        try:
            with Image.open(paths[i]) as image:
                width, height = image.size
        except (OSError, ValueError):  # unreadable: the bad-record guard counts it when it is read
            continue
        if width != height:
            odd.append((paths[i], width, height))
    if odd:
        path, width, height = odd[0]
        logger.warning(
            f"{source}: {len(odd)} of {len(picks)} sampled images are not square (e.g. {path.name}: {width} x "
            f"{height}), so not aligned face crops: each is squashed to {image_size} x {image_size}; align photos "
            "first (python -m tools.align --input PHOTOS --output ALIGNED)"
        )
    return len(odd)


class ImageFileDataset(Dataset):
    """Images read from files. Item ``i``: ``{"image": H x W x 3 uint8 RGB, "label": int, "index": i}``.

    ``image_size`` resizes every image to that square; a file that does not decode is skipped, counted and
    reported (see `BadRecordGuard`).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray,
        source: str,
        bgr: bool = False,
        image_size: int | None = None,
        max_bad_fraction: float = 0.01,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)
        self.bgr, self.image_size = bgr, image_size
        self.num_classes = int(self.labels.max()) + 1
        self.guard = BadRecordGuard(source, len(self.paths), max_bad_fraction)
        if image_size is not None:
            warn_if_not_square(self.paths, source, image_size)

    @property
    def bad_records(self) -> int:
        return self.guard.bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return self.guard.read(index, self.load)

    def load(self, i: int) -> dict[str, Any]:
        """Exactly item ``i`` (no substitute): a file that does not decode is a `DataError`."""
        image = read_image_file(self.paths[i], self.bgr, self.image_size, strict=True)
        return {"image": image, "label": int(self.labels[i]), "index": i}


def open_image_folder(root: str | os.PathLike[str], **options: Any) -> ImageFileDataset:
    """``root/<identity>/<image>``, or a flat folder of images as one unlabelled set (every label 0: landmarks
    and pretraining need none, fine-tuning refuses a single identity), as `tools.align` accepts both."""
    try:
        paths, labels, _ = scan_image_folder(root)
    except DataError:
        if not Path(root).is_dir():
            raise
        paths = sorted(p for p in Path(root).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise
        labels = np.zeros(len(paths), dtype=np.int64)
    return ImageFileDataset(paths, labels, source=str(root), **options)


def open_list_file(path: str | os.PathLike[str], **options: Any) -> ImageFileDataset:
    paths, labels = read_list_file(path)
    # Stat a spread sample, not millions of files: a wrong root shows at once, a stray missing file is skipped later.
    sample = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), 1000)).astype(int))
    missing = next((paths[i] for i in sample if not paths[i].is_file()), None)
    if missing is not None:
        raise DataError(f"{path}: listed image {missing} does not exist")
    return ImageFileDataset(paths, labels, source=str(path), **options)
