"""Compute a dataset's landmark cache with MediaPipe, once, offline; or merge caches computed as shards.

    python -m tools.landmarks --input DATA --output CACHE [--workers N] [--shard I/N] [--landmark-set mediapipe196]
    python -m tools.landmarks --merge SHARD_CACHE [SHARD_CACHE ...] --output CACHE

DATA is a .rec, an image folder or a path,label list file of aligned faces. Stopping (Ctrl-C) keeps what is done;
running the same command again resumes. Faces MediaPipe does not find are marked invalid and counted; training then
uses the template for them (data.missing_landmarks=template) or skips them (=skip). Use the cache in training with
data.landmarks=CACHE.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lafs.cli import entry_point
from lafs.errors import ConfigError
from lafs.landmarks.cache import merge_caches
from lafs.landmarks.extract import extract_landmarks


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise ConfigError(f"--shard must look like I/N with 0 <= I < N, got '{text}'")
    return int(index), int(count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="dataset: .rec, image folder or path,label list file")
    source.add_argument("--merge", nargs="+", metavar="SHARD_CACHE", help="shard caches of one dataset to combine")
    parser.add_argument("--output", required=True, help="cache folder to create, resume or merge into")
    parser.add_argument("--landmark-set", default="mediapipe196", help="landmark set (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=112, help="model input size the pixels refer to")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N", help="compute only shard I of N")
    parser.add_argument("--bgr", action="store_true", help="the dataset stores BGR pixels (MS1MV3's .rec)")
    parser.add_argument("--max-images", type=int, help="stop after this many images (resume later)")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.merge:
        cache = merge_caches(args.merge, args.output)
        info = cache.info
        print(
            f"merged {len(args.merge)} shards -> {args.output}: {info.num_images} images, "
            f"{info.found} faces found, {info.num_images - info.found} missed"
        )
        return 0
    report = extract_landmarks(
        args.input,
        args.output,
        landmark_set=args.landmark_set,
        image_size=args.image_size,
        workers=args.workers,
        shard=args.shard,
        bgr=args.bgr,
        max_images=args.max_images,
    )
    missed = report.processed - report.found
    state = f"{report.remaining} left, run again to resume" if report.remaining else "shard complete"
    print(
        f"{args.output}: {report.processed} images in {report.seconds:.1f} s, {report.images_per_second:.1f} img/s "
        f"once running ({args.workers} workers), {missed} without a face found; {state}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
