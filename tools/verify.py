"""Compare two face images with a trained encoder: their cosine similarity and, given a threshold, same or different.

    python -m tools.verify A.jpg B.jpg --model RUN_DIR|ENCODER|MODEL.onnx [--align] [--no-flip]
                           [--threshold T | --report report.json --far 1e-3 [--set lfw]]
                           [--landmarks auto|template|mediapipe|predictor]

Without --align the two images must be aligned square face crops; with --align photos are searched for a face with
MediaPipe and aligned first (a photo without a face is an error). Embeddings are insightface's (image + mirror image,
unless --no-flip). The pair is "same" when the similarity is at or above the threshold: --threshold gives it,
or --report takes the one `tools/evaluate.py` measured on a verification set at the false-accept rate --far
(--set names the set when the report holds several). The encoder gets the landmarks it was trained with (--landmarks
auto; another choice warns): for MediaPipe-trained encoders MediaPipe runs on each aligned face.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import add_threads_option, entry_point, set_threads
from lafs.errors import ConfigError, DataError
from lafs.landmarks.provenance import add_landmark_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("first", type=Path, metavar="A", help="first face image")
    parser.add_argument("second", type=Path, metavar="B", help="second face image")
    parser.add_argument("--model", type=Path, required=True, metavar="RUN_DIR|ENCODER|MODEL.onnx", help="encoder")
    parser.add_argument("--align", action="store_true", help="find and align the faces with MediaPipe")
    parser.add_argument("--no-flip", action="store_true", help="embed the image only, not image + mirror image")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--threshold", type=float, metavar="T", help="cosine similarity at or above which: same")
    source.add_argument("--report", type=Path, metavar="REPORT.json", help="evaluation report to take it from")
    parser.add_argument("--far", type=float, default=1e-3, help="false-accept rate of --report's threshold (1e-3)")
    parser.add_argument("--set", dest="set_name", metavar="NAME", help="--report's verification set (e.g. lfw)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_landmark_options(parser, workers=False)
    add_threads_option(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.report is None and args.set_name is not None:
        raise ConfigError("--set goes with --report")
    if args.threshold is not None and not -1 <= args.threshold <= 1:
        raise ConfigError(f"--threshold is a cosine similarity between -1 and 1, got {args.threshold}")

    from lafs.evaluation.verification import embed_images
    from lafs.export.inference import open_encoder
    from lafs.photos import cosine, crop_landmarks, load_faces, threshold_from_report

    threshold, origin = None, ""
    if args.threshold is not None:
        threshold, origin = args.threshold, "given threshold"
    elif args.report is not None:
        threshold, origin = threshold_from_report(args.report, args.far, args.set_name)
    for path in (args.first, args.second):
        if not path.is_file():
            raise DataError(f"{path}: no such file")
    model, choice = open_encoder(args.model, args.landmarks)
    print(choice.describe())
    if args.device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    try:
        model = model.to(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {device}: {str(exc).splitlines()[0]}") from None
    crops, _, failures = load_faces([args.first, args.second], args.align)
    if failures:
        path, reason = failures[0]
        raise DataError(f"{path}: {reason}")
    landmarks, missed = crop_landmarks(choice, crops)
    if missed:
        print(f"MediaPipe found no face on {missed} of the 2 aligned faces: the template stands in")
    permutation = choice.flip_permutation() if landmarks is not None else None
    embeddings = embed_images(model, crops, 2, not args.no_flip, device, landmarks, permutation)
    similarity = cosine(embeddings[0], embeddings[1])
    print(f"similarity {similarity:.4f}")
    if threshold is not None:
        verdict = "same" if similarity >= threshold else "different"
        sign = ">=" if verdict == "same" else "<"
        print(f"{verdict} ({similarity:.4f} {sign} {threshold:.4f}, {origin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
