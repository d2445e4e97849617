"""IJB-B / IJB-C 1:1 verification of an encoder (insightface's protocol, TAR at FAR 1e-6 ... 1e-1).

    python -m tools.evaluate_ijb --input RUN_DIR|ENCODER|MODEL.onnx --ijb ROOT/IJBC --output OUT
        [--dataset IJBB|IJBC] [--no-flip] [--feature-norm] [--detector-score] [--batch-size 128] [--device cpu]

--ijb is insightface's layout of one set: loose_crop/*.jpg and meta/<set>_{face_tid_mid,template_pair_label,
name_5pts_score}.txt. --dataset defaults to the folder's name. Options (insightface's test mode letters):
flip sums the embeddings of each face and its mirror (F, on by default); --feature-norm keeps each image feature's
norm as a quality weight instead of normalising it (N); --detector-score weights each image by its detector score
(D). insightface's published tables use all three (N1D1F2). They change TAR by whole points; the report names them.
Writes OUT/ijb_report.json and prints one table row of TAR (%) at each FAR.

The encoder gets the landmarks it was trained with (--landmarks auto; another choice warns). MediaPipe landmarks are
computed once on the aligned faces in --workers processes and cached beside meta/<set>_name_5pts_score.txt (in OUT
when that folder is read-only); faces MediaPipe misses get the template and are counted in the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lafs.cli import add_threads_option, entry_point, int_in_range, set_threads
from lafs.errors import DataError
from lafs.evaluation.ijb import DATASETS, IJBOptions, evaluate_ijb, ijb_landmarks, read_meta
from lafs.files import write_atomic
from lafs.landmarks.provenance import add_landmark_options


def format_table(report: dict[str, Any]) -> str:
    """A header and one row: dataset and options, TAR (%) at each FAR (``*`` marks an unresolvable FAR)."""
    tars = report["tar_at_far"] or {}
    resolvable = report["tar_at_far_resolvable"]
    label = f"{report['dataset']} {report['options']['test_mode']}"
    header = [f"{'set/mode':<14}"] + [f"{key:>8}" for key in resolvable]
    row = [f"{label:<14}"]
    for key, ok in resolvable.items():
        value = tars.get(key)
        cell = "-" if value is None else f"{100 * value:.2f}" + ("" if ok else "*")
        row.append(f"{cell:>8}")
    return " | ".join(header) + "\n" + " | ".join(row)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.evaluate_ijb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True, help="run directory, exported encoder folder or .onnx")
    parser.add_argument("--ijb", type=Path, required=True, metavar="ROOT/IJBC", help="one IJB set's folder")
    parser.add_argument("--dataset", choices=DATASETS, help="IJBB or IJBC (default: the --ijb folder's name)")
    parser.add_argument("--output", type=Path, required=True, metavar="OUT", help="folder for ijb_report.json")
    parser.add_argument("--no-flip", action="store_true", help="do not add the mirrored face's embedding (F)")
    parser.add_argument("--feature-norm", action="store_true", help="keep image feature norms as weights (N)")
    parser.add_argument("--detector-score", action="store_true", help="weight images by detector score (D)")
    parser.add_argument("--batch-size", type=int_in_range(1), default=128, help="images per forward (default 128)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_landmark_options(parser)
    add_threads_option(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    dataset = args.dataset or args.ijb.resolve().name.upper()
    if dataset not in DATASETS:
        raise DataError(f"{args.ijb}: cannot tell IJBB from IJBC by the folder name; pass --dataset")
    if not args.ijb.is_dir():
        raise DataError(f"{args.ijb}: not a folder")

    from lafs.export.inference import open_encoder

    model, choice = open_encoder(args.input, args.landmarks)
    print(choice.describe())
    meta = read_meta(args.ijb, dataset)
    landmarks = ijb_landmarks(choice, args.ijb, dataset, meta, args.workers, fallback_dir=args.output)
    print(landmarks.describe(dataset))
    options = IJBOptions(flip=not args.no_flip, feature_norm=args.feature_norm, detector_score=args.detector_score)
    permutation = choice.flip_permutation() if choice.takes_landmarks else None
    report = evaluate_ijb(
        model, args.ijb, dataset, options, args.batch_size, args.device, meta, landmarks.points, permutation
    )
    report = {"input": str(args.input), "ijb": str(args.ijb), **choice.record(), **report}
    report["landmarks"] = landmarks.record
    out = args.output / "ijb_report.json"
    write_atomic(out, json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"wrote {out} ({report['num_pairs']} pairs, {report['num_templates']} templates, options {options.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
