"""Pack a face-verification pairs list into an insightface ``.bin`` (as LFW, CFP-FP and AgeDB-30 are published), or
split an identity folder into training identities and held-aside pair sets (a development protocol).

    python -m tools.make_bin --input pairs.txt --output my_set.bin [--image-size 112] [--quality 95] [--overwrite]
    python -m tools.make_bin --split ALIGNED_FOLDER --output DEV_FOLDER [--held-aside 100] [--seed 0] [--pairs 2000]

The pairs file has one pair per line: ``path_a path_b 1|0`` (1 = same person, 0 = different), whitespace separated,
``#`` starts a comment, blank lines are skipped; or a CSV ``path_a,path_b,label`` with an optional header row (labels
1/0, true/false, same/different); or LFW's own pairs.txt (``name n1 n2`` / ``name1 n1 name2 n2``, naming
``name/name_000n.jpg``). Relative paths are resolved against the pairs file's folder. Pairs may come in any order:
verification folds each hold both classes (lafs.evaluation.verification.fold_splits).
Images are read with OpenCV (anything it decodes), resized to N x N unless --image-size is 0, stored as JPEG.
The result loads with ``lafs.data.pairs.load_bin`` and with insightface's own ``load_bin``. An existing --output is
refused unless --overwrite.

--split (--image-size and --quality do not apply: images are stored as read) draws --held-aside identities of
ALIGNED_FOLDER (<identity>/<image>; a seeded draw from the sorted names, so
the same command always gives the same split) and writes to DEV_FOLDER: train.csv (path,label of the training
identities: fine-tuning's and pretraining's data.path), held_aside.csv, held_aside_ff.bin (frontal-frontal pairs of
held-aside people) and, when file names mark profiles (profile_*, as CFP's do), held_aside_fp.bin (frontal-profile),
each --pairs pairs alternating same / different, and split.json. Select models on these pairs only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import entry_point, int_in_range


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.make_bin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, metavar="PAIRS_FILE", help="text file of pairs")
    source.add_argument("--split", type=Path, metavar="FOLDER", help="aligned identity folder to split")
    parser.add_argument("--output", type=Path, required=True, metavar="OUT", help=".bin file (or --split's folder)")
    parser.add_argument(
        "--image-size", type=int_in_range(0), default=112, metavar="N", help="resize to N x N, 0 keeps (default 112)"
    )
    parser.add_argument("--quality", type=int_in_range(1, 100), default=95, help="JPEG quality 1..100 (default 95)")
    parser.add_argument("--held-aside", type=int_in_range(2), default=100, help="--split: identities (default 100)")
    parser.add_argument("--seed", type=int_in_range(0), default=0, help="--split: which are held aside (default 0)")
    parser.add_argument("--pairs", type=int_in_range(20), default=2000, help="--split: pairs per set (default 2000)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it already exists")
    args = parser.parse_args(argv)

    if args.split is not None:
        return _split(args)
    from lafs.data.pairs import load_pair_images, write_bin
    from lafs.files import prepare_output_files

    prepare_output_files([args.output], args.overwrite)
    pairs, issame = load_pair_images(args.input, args.image_size or None)
    write_bin(args.output, pairs, issame, quality=args.quality)
    same = sum(issame)
    size = args.output.stat().st_size
    print(f"wrote {args.output}: {len(issame)} pairs ({same} same, {len(issame) - same} different), {size:,} bytes")
    return 0


def _split(args: argparse.Namespace) -> int:

    from lafs.errors import DataError
    from lafs.fewshot.devset import FILES, DevSplitConfig, make_dev_split
    from lafs.files import prepare_output_files, read_json

    if not args.split.is_dir():
        raise DataError(f"{args.split}: not a folder of identity sub-folders")
    if args.output.exists() and not args.output.is_dir():
        raise DataError(f"{args.output}: exists and is not a folder (--split writes a folder)")
    prepare_output_files([args.output / name for name in FILES], args.overwrite)
    cfg = DevSplitConfig(input=args.split, output=args.output, held_aside=args.held_aside, seed=args.seed,
                         pairs=args.pairs)  # fmt: skip
    written = make_dev_split(cfg)
    record = read_json(args.output / "split.json")
    print(
        f"split {args.split}: {len(record['training_identities'])} training identities "
        f"({record['training_images']} images), {len(record['held_aside_identities'])} held aside "
        f"({record['held_aside_images']} images); pairs {record['pairs']}"
    )
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
