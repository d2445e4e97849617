"""Embed face images with a trained encoder: one L2-normalised row per image, in a .npy.

    python -m tools.embed --input IMAGES_OR_FOLDERS... --model RUN_DIR|ENCODER|MODEL.onnx --output OUT.npy
                          [--align] [--batch-size 64] [--no-flip] [--device cpu|cuda] [--overwrite]
                          [--landmarks auto|template|mediapipe|predictor]

--input takes image files and folders (searched recursively, sorted). Without --align the images must be aligned
square face crops (resized to 112 x 112 if of another size; non-square ones are refused); with --align any photo is
searched for a face with MediaPipe and aligned onto the ArcFace template first.

--model is a training run directory (its encoder/), an exported encoder folder (model.safetensors + config.json)
or an .onnx file. Embeddings are insightface's: the image's plus its mirror image's (--no-flip: the image's only),
then L2-normalised. The encoder gets the landmarks it was trained with (--landmarks auto; another choice warns): for
MediaPipe-trained encoders MediaPipe runs on each aligned crop, and crops where it finds no face get the template.

Writes OUT.npy (N, D) float32, OUT.index.csv (row,path: which image each row is) and, when some images fail,
OUT.failed.csv (path,reason); failures are listed on stderr too. All files appear whole or not at all; if no image
succeeds, nothing is written and the exit status is 2. Existing output files are refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import add_threads_option, entry_point, int_in_range, set_threads
from lafs.errors import ConfigError, DataError
from lafs.landmarks.provenance import add_landmark_options


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.embed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", type=Path, nargs="+", required=True, metavar="IMAGES_OR_FOLDERS", help="images and folders"
    )
    parser.add_argument("--model", type=Path, required=True, metavar="RUN_DIR|ENCODER|MODEL.onnx", help="encoder")
    parser.add_argument("--output", type=Path, required=True, metavar="OUT.npy", help=".npy file to write")
    parser.add_argument("--align", action="store_true", help="find and align faces in photos with MediaPipe")
    parser.add_argument("--batch-size", type=int_in_range(1), default=64, help="images per batch (default 64)")
    parser.add_argument("--no-flip", action="store_true", help="embed the image only, not image + mirror image")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    add_landmark_options(parser, workers=False)
    add_threads_option(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    if args.output.suffix != ".npy":
        raise ConfigError(f"--output must end in .npy, got {args.output}")
    from lafs.files import prepare_output_files
    from lafs.photos import embedding_side_paths

    prepare_output_files([args.output, *embedding_side_paths(args.output)], args.overwrite)

    from lafs.evaluation.verification import embed_images
    from lafs.export.inference import open_encoder
    from lafs.photos import (
        NO_DIRECTION,
        collect_images,
        crop_landmarks,
        l2_normalise_rows,
        load_faces,
        unusable_rows,
        write_embeddings,
    )

    paths = collect_images(args.input)
    model, choice = open_encoder(args.model, args.landmarks)
    print(choice.describe())
    device = args.device or default_device()
    try:
        model = model.to(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {device}: {str(exc).splitlines()[0]}") from None
    start = time.perf_counter()
    crops, kept, failures = load_faces(paths, args.align)
    if not crops:
        path, reason = failures[0]
        raise DataError(f"none of the {len(paths)} images gave a face (e.g. {path}: {reason}); nothing written")
    for path, reason in failures:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    landmarks, missed = crop_landmarks(choice, crops)
    if missed:
        print(f"MediaPipe found no face on {missed} of {len(crops)} crops: they get the template")
    permutation = choice.flip_permutation() if landmarks is not None else None
    embeddings = embed_images(model, crops, args.batch_size, not args.no_flip, device, landmarks, permutation)
    embeddings = l2_normalise_rows(embeddings)
    usable = ~unusable_rows(embeddings)
    if not usable.all():  # a broken encoder or input: listed as failures, never written as vectors
        failures += [(path, NO_DIRECTION) for path, ok in zip(kept, usable, strict=True) if not ok]
        print(f"failed: {len(usable) - int(usable.sum())} images: {NO_DIRECTION}", file=sys.stderr)
        if not usable.any():
            raise DataError(f"none of the {len(paths)} images gave an embedding ({NO_DIRECTION}); nothing written")
        embeddings, kept = embeddings[usable], [path for path, ok in zip(kept, usable, strict=True) if ok]
    seconds = time.perf_counter() - start
    write_embeddings(args.output, embeddings, kept, failures)
    index_path, failed_path = embedding_side_paths(args.output)
    failed = f"{len(failures)} failed (listed in {failed_path})" if failures else "0 failed"
    print(
        f"embedded {len(kept)} of {len(paths)} images, {failed}, {len(paths) / seconds:.1f} images/s; "
        f"wrote {args.output} ({embeddings.shape[0]} x {embeddings.shape[1]} float32) and {index_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
