"""Pack a face-verification pairs list into an insightface ``.bin`` (as LFW, CFP-FP and AgeDB-30 are published).

    python -m tools.make_bin --input pairs.txt --output my_set.bin [--image-size 112] [--quality 95] [--overwrite]

The pairs file has one pair per line: ``path_a path_b 1|0`` (1 = same person, 0 = different), whitespace separated.
``#`` starts a comment and blank lines are skipped; relative paths are resolved against the pairs file's folder.
Images are read with OpenCV (anything it decodes), resized to N x N unless --image-size is 0, stored as JPEG.
The result loads with ``lafs.data.pairs.load_bin`` and with insightface's own ``load_bin``. An existing --output is
refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import entry_point, int_in_range
from lafs.data.pairs import load_pair_images, write_bin
from lafs.files import prepare_output_files


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.make_bin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True, metavar="PAIRS_FILE", help="text file of pairs")
    parser.add_argument("--output", type=Path, required=True, metavar="OUT.bin", help=".bin file to write")
    parser.add_argument(
        "--image-size", type=int_in_range(0), default=112, metavar="N", help="resize to N x N, 0 keeps (default 112)"
    )
    parser.add_argument("--quality", type=int_in_range(1, 100), default=95, help="JPEG quality 1..100 (default 95)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it already exists")
    args = parser.parse_args(argv)

    prepare_output_files([args.output], args.overwrite)
    pairs, issame = load_pair_images(args.input, args.image_size or None)
    write_bin(args.output, pairs, issame, quality=args.quality)
    same = sum(issame)
    size = args.output.stat().st_size
    print(f"wrote {args.output}: {len(issame)} pairs ({same} same, {len(issame) - same} different), {size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
