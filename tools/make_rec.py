"""Convert an image folder or a path,label list file to an insightface .rec + .idx, or rebuild a lost .idx.

    python -m tools.make_rec --input FOLDER_OR_LIST --output OUT.rec [--size 112] [--quality 95] [--workers N]
                             [--overwrite]
    python -m tools.make_rec --rebuild-index PATH.rec [--overwrite]

The folder has one sub-folder per identity (labels 0, 1, ... in sorted folder-name order); a list file has
`path,label` rows, relative paths being relative to it. The .rec has insightface's layout (MS1MV3, Glint360K):
records 1..N are the images grouped by label (in list order within a label), then one identity record per label
0..max (an unused label gets an empty one, so labels keep their values), then record 0, the header. It opens with
`open_dataset(OUT.rec)` (layout "classic") and with insightface's own loaders.

Images are resized to --size x --size (0 keeps each image's size) and stored as JPEG at --quality, except JPEG files
already of that size, whose bytes are copied unchanged (a second compression would only lose detail). Pixels are
stored in RGB order (read them with bgr=False). An image that does not decode stops the run, naming it, and nothing
is written.

--rebuild-index walks PATH.rec and writes PATH.idx next to it: the fix the readers suggest when the .idx is lost.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lafs.cli import entry_point, int_in_range
from lafs.data.folder import read_list_file, scan_image_folder
from lafs.data.images import UndecodableImage, decode_image, encode_jpeg, resize_square
from lafs.data.open import LIST_SUFFIXES
from lafs.data.recordio import rebuild_index, write_face_rec
from lafs.errors import ConfigError, DataError

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
            tqdm(converted, total=len(paths), unit="img", disable=None), labels, strict=True
        ):
            copied += was_copied
            yield payload, label

    output.parent.mkdir(parents=True, exist_ok=True)
    images, identities = write_face_rec(output, items())
    return images, identities, copied


def rebuild(rec: Path, overwrite: bool = False) -> tuple[Path, int]:
    """Rebuild the .idx beside ``rec``; returns its path and the number of records."""
    if not rec.is_file():
        raise DataError(f"{rec}: no such file")
    idx = rec.with_suffix(".idx")
    if idx.exists() and not overwrite:
        raise DataError(f"{idx}: already exists (pass --overwrite to rebuild it)")
    rebuild_index(rec, idx)
    with idx.open("rb") as lines:
        return idx, sum(1 for _ in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.make_rec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", type=Path, metavar="FOLDER_OR_LIST", help="image folder or path,label list file")
    mode.add_argument("--rebuild-index", type=Path, metavar="PATH.rec", help="write PATH.idx for an existing .rec")
    parser.add_argument("--output", type=Path, metavar="OUT.rec", help=".rec to write (the .idx goes beside it)")
    parser.add_argument(
        "--size", type=int_in_range(0), default=112, metavar="N", help="resize to N x N, 0 keeps (default 112)"
    )
    parser.add_argument("--quality", type=int_in_range(1, 100), default=95, help="JPEG quality 1..100 (default 95)")
    parser.add_argument("--workers", type=int_in_range(1), default=4, help="encoding threads (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rebuild_index is not None:
        if args.output is not None:
            raise ConfigError("--rebuild-index writes PATH.idx beside the .rec and takes no --output")
        idx, records = rebuild(args.rebuild_index, args.overwrite)
        print(f"wrote {idx}: {records} records")
        return 0
    output = args.output
    if output is None or output.suffix != ".rec":
        raise ConfigError(f"--output must name the .rec to write (OUT.rec), got {output}")
    existing = [path for path in (output, output.with_suffix(".idx")) if path.exists()]
    if existing and not args.overwrite:
        raise DataError(f"{existing[0]}: already exists (pass --overwrite to replace it)")
    start = time.perf_counter()
    images, identities, copied = make_rec(args.input, output, args.size or None, args.quality, args.workers)
    rate = images / (time.perf_counter() - start)
    print(
        f"wrote {output} + .idx (insightface layout): {images} images, {identities} identities; "
        f"{copied} JPEGs copied, {images - copied} encoded at quality {args.quality}; "
        f"{output.stat().st_size:,} bytes, {rate:.0f} images/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
