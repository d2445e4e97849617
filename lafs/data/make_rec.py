"""Writing image folders and path,label list files as insightface ``.rec`` + ``.idx`` files, and rebuilding a lost
``.idx`` (the library side of ``tools/make_rec.py``).

The .rec has insightface's layout (MS1MV3, Glint360K): records 1..N are the images grouped by label (in list order
within a label), then one identity record per label 0..max, then record 0, the header. Images are resized to a square
and stored as JPEG, except JPEG files already of that size, whose bytes are copied unchanged. Pixels are RGB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np

from lafs.data.folder import read_list_file, scan_image_folder
from lafs.data.images import UndecodableImage, decode_image, encode_jpeg, resize_square
from lafs.data.open import LIST_SUFFIXES
from lafs.data.recordio import rebuild_index, write_face_rec
from lafs.errors import DataError
from lafs.progress import progress_bar

JPEG_START = b"\xff\xd8\xff"  # SOI marker + the first byte of the next marker
CHUNK = 256  # images handed to the threads at a time: bounds the encoded bytes waiting in memory


def convert_image(path: Path, size: int | None, quality: int) -> tuple[bytes, bool]:
    """(record payload, copied) for one image file: its own bytes when a JPEG of the wanted size, else a new JPEG."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        image = decode_image(data)  # also checks that a JPEG to be copied decodes
    except UndecodableImage:
        raise DataError(f"{path}: does not decode as an image") from None
    if data.startswith(JPEG_START) and (size is None or image.shape[:2] == (size, size)):
        return data, True
    return encode_jpeg(resize_square(image, size), quality), False


def convert_images(paths: Sequence[Path], size: int | None, quality: int, workers: int) -> Iterator[tuple[bytes, bool]]:
    """`convert_image` of every path, in order; OpenCV releases the GIL, so threads decode and encode in parallel."""
    with ThreadPoolExecutor(workers) as pool:
        pending: Iterator[tuple[bytes, bool]] = iter(())
        for start in range(0, len(paths), CHUNK):
            # Submit the next chunk before handing out the previous one, so the threads never wait for the writer.
            submitted = pool.map(convert_image, paths[start : start + CHUNK], repeat(size), repeat(quality))
            yield from pending
            pending = submitted
        yield from pending


def read_image_list(source: Path) -> tuple[list[Path], np.ndarray]:
    """Image paths and labels of an identity folder or a path,label list file."""
    if source.is_dir():
        paths, labels, _ = scan_image_folder(source)
        return paths, labels
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if source.suffix.lower() not in LIST_SUFFIXES:
        raise DataError(f"{source}: not an image folder or a path,label list file ({', '.join(LIST_SUFFIXES)})")
    return read_list_file(source)


def make_rec(
    source: Path, output: Path, size: int | None = 112, quality: int = 95, workers: int = 1
) -> tuple[int, int, int]:
    """Write ``source`` as an insightface-layout ``output`` .rec + .idx; returns (images, identities, copied)."""
    paths, labels = read_image_list(source)
    order = np.argsort(labels, kind="stable")  # the layout wants each identity's images together
    paths, labels = [paths[i] for i in order], labels[order].tolist()
    copied = 0

    def items() -> Iterator[tuple[bytes, int]]:
        nonlocal copied
        converted = convert_images(paths, size, quality, workers)
        for (payload, was_copied), label in zip(
            progress_bar(converted, total=len(paths), desc="images", unit="img"), labels, strict=True
        ):
            copied += was_copied
            yield payload, label

    output.parent.mkdir(parents=True, exist_ok=True)
    images, identities = write_face_rec(output, items())
    return images, identities, copied


def rebuild_rec_index(rec: Path, overwrite: bool = False) -> tuple[Path, int]:
    """Rebuild the .idx beside ``rec``; returns its path and the number of records. An existing .idx is kept (a
    `DataError`) unless ``overwrite``."""
    if not rec.is_file():
        raise DataError(f"{rec}: no such file")
    idx = rec.with_suffix(".idx")
    if idx.exists() and not overwrite:
        raise DataError(f"{idx}: already exists (pass --overwrite to rebuild it)")
    rebuild_index(rec, idx)
    with idx.open("rb") as lines:
        return idx, sum(1 for _ in lines)
