"""Evaluate a face encoder on verification pair sets in insightface's ``.bin`` format (LFW, CFP-FP, AgeDB-30, ...).

    python -m tools.evaluate --input RUN_DIR|ENCODER_FOLDER|MODEL.onnx --bin lfw.bin [--bin cfp_fp.bin ...]
        --output OUT_FOLDER [--batch-size 128] [--no-flip] [--device cpu|cuda]
        [--landmarks auto|template|mediapipe|predictor] [--workers N]
    python -m tools.evaluate --baseline lbp|pixels --bin ... --output OUT_FOLDER

--baseline scores a hand-crafted descriptor instead of a model, with the same protocol (`lafs.evaluation.baselines`:
uniform LBP histograms in a 7 x 7 grid, or grey pixels at 32 x 32): the floor a trained encoder must clear.

Each set is named after its file (``lfw.bin`` -> ``lfw``). Images are resized to the encoder's input size if they
differ, embedded (with --no-flip not summed with their mirror image), and scored by cosine similarity with
insightface's 10-fold protocol. OUT_FOLDER receives report.json (every number), report.md (a table) and roc.png;
the table is also printed. Every input is read and checked before anything is written.

The encoder gets the landmarks it was trained with (--landmarks auto: its config.json's landmark_source; folders
written before that record count as template, or predictor when they hold one); another choice warns. For MediaPipe
landmarks, MediaPipe runs once per set in --workers processes and the result is cached beside the set
(``lfw.bin.landmarks-mediapipe196.npz``; in OUT_FOLDER when the set's folder is read-only); faces MediaPipe misses
get the template and are counted in the report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lafs.cli import add_threads_option, entry_point, int_in_range, set_threads
from lafs.errors import DataError
from lafs.landmarks.provenance import add_landmark_options

if TYPE_CHECKING:
    import torch

FOLDS = 10  # insightface's protocol


def _device(text: str) -> torch.device:  # torch is imported lazily so --help stays fast
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda, got {text!r}")
    return device


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, metavar="PATH", help="run directory, exported encoder folder or .onnx")
    source.add_argument("--baseline", choices=("lbp", "pixels"), help="a hand-crafted descriptor instead of a model")
    parser.add_argument(
        "--bin", type=Path, action="append", required=True, metavar="SET.bin", help="pair set (repeat for several)"
    )
    parser.add_argument("--output", type=Path, required=True, metavar="OUT_FOLDER", help="folder for the report")
    parser.add_argument("--batch-size", type=int_in_range(1), default=128, help="images per batch (default 128)")
    parser.add_argument("--no-flip", action="store_true", help="do not add the mirrored image's embedding")
    parser.add_argument(
        "--device", type=_device, default=None, help="cpu or cuda[:N] (default cuda when available, else cpu)"
    )
    add_landmark_options(parser)
    add_threads_option(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    import torch

    from lafs.data.pairs import load_bin
    from lafs.evaluation.landmarks import bin_landmarks
    from lafs.evaluation.report import build_report, encoder_info, evaluate_sets, format_table, write_report
    from lafs.export.inference import open_encoder
    from lafs.progress import progress_bar

    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {device}: CUDA is not available")
    names = [path.stem for path in args.bin]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"two --bin files share the set name {duplicates[0]!r} (names are file stems)")
    if args.output.exists() and not args.output.is_dir():
        raise DataError(f"{args.output}: exists and is not a folder")

    # Everything is read and checked before the output folder is touched.
    if args.baseline:
        from lafs.evaluation.baselines import HandCraftedEncoder
        from lafs.landmarks.provenance import TEMPLATE, LandmarkChoice

        model: torch.nn.Module = HandCraftedEncoder(args.baseline)
        choice = LandmarkChoice(TEMPLATE, TEMPLATE, True, False, None)
    else:
        model, choice = open_encoder(args.input, args.landmarks)
    image_size = choice.image_size
    sets = {}
    for name, path in zip(names, args.bin, strict=True):
        images, issame = load_bin(path, image_size=image_size)
        if len(issame) < FOLDS:
            raise DataError(f"{path}: {len(issame)} pairs, the {FOLDS}-fold protocol needs at least {FOLDS}")
        sets[name] = (images, issame)
    if not args.baseline:
        print(choice.describe())
    landmarks = {
        name: bin_landmarks(choice, path, len(sets[name][0]), args.workers, fallback_dir=args.output)
        for name, path in zip(names, args.bin, strict=True)
    }
    for name, found in landmarks.items():
        print(found.describe(name))
    points = {name: found.points for name, found in landmarks.items() if found.points is not None}
    model = model.to(device)

    flip = not args.no_flip
    total = sum(len(images) for images, _ in sets.values())
    permutation = choice.flip_permutation() if choice.takes_landmarks else None
    with progress_bar(total=total, desc="embedding", unit="img") as bar:
        results = evaluate_sets(
            model,
            sets,
            batch_size=args.batch_size,
            flip=flip,
            device=device,
            folds=FOLDS,
            progress=bar.update,
            landmarks=points,
            flip_permutation=permutation,
        )
    for name, found in landmarks.items():
        results[name]["landmarks"] = found.record
    encoder = {"input": f"baseline:{args.baseline}"} if args.baseline else encoder_info(args.input)
    report = build_report(encoder, results, flip=flip, folds=FOLDS, landmarks=choice.record())
    write_report(report, args.output)
    print(format_table(report))
    print(f"wrote {args.output / 'report.json'}, report.md, roc.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
