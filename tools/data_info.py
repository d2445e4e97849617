"""Describe a face dataset: format, counts, image sizes, and whether its colours look RGB or BGR.

    python -m tools.data_info PATH [--bgr] [--sample 200]      (or --input PATH)

PATH is a .rec (with its .idx), an image folder (one sub-folder per identity), a path,label list file or a .bin
pair set. Counts come from the index, folder, list or pickle; image sizes and colours from a sample of --sample
images spread evenly over the dataset, in which records that fail to read or decode are counted as bad.

Colour check: face crops are mostly skin, whose red channel is brighter than its blue. If the sampled images average
B > R, the pixels are most likely stored in BGR order (MS1MV3's .rec is): train with --bgr / data.bgr=true. Given
--bgr, the images are read that way and the check says whether that is right.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import entry_point, int_in_range
from lafs.data.info import describe


def format_table(rows: Sequence[tuple[str, str]]) -> str:
    """The rows as two aligned columns."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.data_info", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, nargs="?", metavar="PATH", help=".rec, image folder, list file or .bin")
    parser.add_argument("--input", type=Path, metavar="PATH", help="the same as PATH")
    parser.add_argument("--bgr", action="store_true", help="read images as BGR-stored (data.bgr=true)")
    parser.add_argument(
        "--sample", type=int_in_range(1), default=200, metavar="N", help="images to decode (default 200)"
    )
    args = parser.parse_args(argv)
    if (args.path is None) == (args.input is None):
        parser.error("give the dataset once: PATH or --input PATH")
    path = args.path or args.input
    if path.suffix == ".bin" and args.bgr:
        parser.error("--bgr does not apply to a .bin (its images are read as RGB)")
    print(format_table(describe(path, args.bgr, args.sample)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
