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
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import entry_point, int_in_range
from lafs.data.make_rec import make_rec, rebuild_rec_index
from lafs.errors import ConfigError
from lafs.files import prepare_output_files


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
        idx, records = rebuild_rec_index(args.rebuild_index, args.overwrite)
        print(f"wrote {idx}: {records} records")
        return 0
    output = args.output
    if output is None or output.suffix != ".rec":
        raise ConfigError(f"--output must name the .rec to write (OUT.rec), got {output}")
    prepare_output_files([output, output.with_suffix(".idx")], args.overwrite)
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
