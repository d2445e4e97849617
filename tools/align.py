"""Align your own face photos to the ArcFace 112 x 112 crop and write them as an image folder, a .rec or a .bin.

    python -m tools.align --input PHOTOS --output OUT [--format folder|rec|bin] [--pairs PAIRS.txt]
                          [--quality 95] [--bgr-rec] [--workers N] [--overwrite]

PHOTOS is a folder with one sub-folder per identity (labels 0, 1, ... in sorted folder-name order), a flat folder of
photos (all label 0), or a path,label list file. A photo may have any size with the face anywhere; its EXIF
orientation is applied. MediaPipe's face mesh (with irises) looks at the whole photo, then at overlapping windows of
1/2 and 1/4 of its short side, since its detector misses faces much smaller than the frame. The eye centres, nose
tip and mouth corners then map the face onto the ArcFace template: a 112 x 112 crop, the only size the template is
defined for (--size accepts nothing else). One face per photo: with several, whichever MediaPipe reports first.

Formats (--format):
  folder  OUT/<identity>/<photo stem>.png, lossless, the input's sub-folders kept (a flat input gives a flat
          folder; a list file gives one sub-folder per label); the report is OUT/report.txt.
  rec     OUT.rec + OUT.idx in insightface's layout (records 1..N images grouped by label, identity records,
          record 0 header), JPEG at --quality, labels as in the input; report OUT_report.txt.
          --bgr-rec stores the channels swapped as MS1MV3 does (read it back with --bgr / data.bgr=true).
  bin     OUT.bin, an insightface pair set, from --pairs: `path_a path_b 1|0` lines, a CSV `path_a,path_b,label`
          (header optional) or LFW's own pairs.txt (as tools/make_bin reads them), paths relative to the pairs
          file or else to PHOTOS (a folder). JPEG at --quality; report OUT_report.txt.
          A pair with a photo that did not align is left out and counted.

Photos without a face, or that do not decode, are listed with the reason in the report and counted in the summary;
the rest is written. If none aligns, nothing is written and the exit status is 2. Outputs appear whole or not at all.
MediaPipe runs on the CPU, one detector per process: --workers N aligns in N processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import entry_point, int_in_range
from lafs.data.align_photos import (
    ALIGNED_FOLDER_KIND,
    NO_FACE,
    OUTPUT_FORMATS,
    UNREADABLE,
    Tally,
    find_photos,
    output_targets,
    pair_photos,
    report_path,
    write_folder,
    write_pairs,
    write_rec,
)
from lafs.errors import ConfigError
from lafs.files import prepare_output_files, prepare_output_folder
from lafs.landmarks.align import ALIGNED_SIZE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.align", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True, metavar="PHOTOS", help="photo folder or list file")
    parser.add_argument("--output", type=Path, required=True, metavar="OUT", help="folder, .rec or .bin to write")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="folder", help="(default: folder)")
    parser.add_argument("--pairs", type=Path, metavar="PAIRS.txt", help="pairs file, required by --format bin")
    parser.add_argument(
        "--size", type=int, choices=(ALIGNED_SIZE,), default=ALIGNED_SIZE, help="crop size: only 112 (the template's)"
    )
    parser.add_argument("--quality", type=int_in_range(1, 100), default=95, help="JPEG quality 1..100 (default 95)")
    parser.add_argument("--bgr-rec", action="store_true", help="store the .rec's pixels in BGR order, as MS1MV3 does")
    parser.add_argument("--workers", type=int_in_range(1), default=1, help="processes, one detector each (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt, output = args.format, args.output
    if (args.pairs is not None) != (fmt == "bin"):
        raise ConfigError("--pairs goes with --format bin, and --format bin needs --pairs")
    if args.bgr_rec and fmt != "rec":
        raise ConfigError("--bgr-rec applies to --format rec only")
    if fmt != "folder" and output.suffix != f".{fmt}":
        raise ConfigError(f"--output for --format {fmt} must end in .{fmt}, got {output}")
    if fmt == "folder":  # missing, empty or a previous aligned folder; only its own files are replaced
        prepare_output_folder(output, ALIGNED_FOLDER_KIND, args.overwrite, inputs=[args.input])
    else:
        prepare_output_files(output_targets(output, fmt), args.overwrite)

    pairs: list[tuple[int, int, bool]] = []
    if fmt == "bin":
        photos, pairs = pair_photos(args.pairs, args.input)
    else:
        photos = find_photos(args.input)
    tally = Tally(len(photos.paths))
    start = time.perf_counter()
    extra = []
    if fmt == "folder":
        write_folder(output, photos, tally, args.input, args.workers, args.overwrite)
        written = f"{output} (PNG crops, lossless)"
    elif fmt == "rec":
        identities = write_rec(output, photos, tally, args.input, args.workers, args.quality, args.bgr_rec)
        order = "BGR: read with --bgr / data.bgr=true" if args.bgr_rec else "RGB"
        written = f"{output} + .idx (insightface layout, JPEG q{args.quality}, {identities} identities, {order})"
    else:
        kept = write_pairs(output, photos, pairs, tally, args.input, args.workers, args.quality)
        extra.append(("pairs", f"{kept} of {len(pairs)} ({len(pairs) - kept} left out: a photo did not align)"))
        written = f"{output} (JPEG q{args.quality})"
    seconds = time.perf_counter() - start
    rows = [
        ("photos", str(tally.photos)),
        ("aligned", str(tally.aligned)),
        ("no face", str(tally.count(NO_FACE))),
        ("unreadable", str(tally.count(UNREADABLE))),
        ("images/s", f"{tally.photos / seconds:.1f}"),
        *extra,
        ("written", written),
        ("report", str(report_path(output, fmt))),
    ]
    width = max(len(key) for key, _ in rows)
    print("\n".join(f"{key:<{width}}  {value}" for key, value in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
