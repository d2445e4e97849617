"""Embed face images with a trained encoder: one L2-normalised row per image, in a .npy.

    python -m tools.embed --input IMAGES_OR_FOLDERS... --model RUN_DIR|ENCODER|MODEL.onnx --output OUT.npy
                          [--align] [--batch-size 64] [--no-flip] [--device cpu|cuda]

--input takes image files and folders (searched recursively, sorted). Without --align the images must be aligned
square face crops (resized to 112 x 112 if of another size; non-square ones are refused); with --align any photo is
searched for a face with MediaPipe and aligned onto the ArcFace template first.

--model is a training run directory (its encoder/), an exported encoder folder (model.safetensors + config.json)
or an .onnx file. Embeddings are insightface's: the image's plus its mirror image's (--no-flip: the image's only),
then L2-normalised.

Writes OUT.npy (N, D) float32, OUT.index.csv (row,path: which image each row is) and, when some images fail,
OUT.failed.csv (path,reason); failures are listed on stderr too. All files appear whole or not at all; if no image
succeeds, nothing is written and the exit status is 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lafs.cli import entry_point, int_in_range
from lafs.errors import ConfigError, DataError


def side_paths(output: Path) -> tuple[Path, Path]:
    """OUT.index.csv and OUT.failed.csv beside OUT.npy."""
    return output.with_suffix(".index.csv"), output.with_suffix(".failed.csv")


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_outputs(output: Path, embeddings: np.ndarray, paths: list[Path], failures: list[tuple[Path, str]]) -> None:
    """Write every file under a temporary name, then rename them all into place (a stale failure list is removed)."""
    index_path, failed_path = side_paths(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staged: list[tuple[Path, Path]] = []
    try:
        temporary = output.with_name(f".{output.name}.{token}.tmp")
        with open(temporary, "wb") as f:
            np.save(f, embeddings)
        staged.append((temporary, output))
        texts = [(index_path, _csv_text(("row", "path"), list(enumerate(map(str, paths)))))]
        if failures:
            texts.append((failed_path, _csv_text(("path", "reason"), [(str(p), r) for p, r in failures])))
        for target, text in texts:
            temporary = target.with_name(f".{target.name}.{token}.tmp")
            temporary.write_text(text, encoding="utf-8")
            staged.append((temporary, target))
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, target in staged:
        os.replace(temporary, target)
    if not failures:
        failed_path.unlink(missing_ok=True)


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
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output.suffix != ".npy":
        raise ConfigError(f"--output must end in .npy, got {args.output}")

    from lafs.evaluation.verification import embed_images
    from lafs.export import load_any_encoder
    from lafs.inference import collect_images, load_faces

    paths = collect_images(args.input)
    model = load_any_encoder(args.model)
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
    embeddings = embed_images(model, crops, batch_size=args.batch_size, flip=not args.no_flip, device=device)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings = np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0).astype(np.float32)
    seconds = time.perf_counter() - start
    write_outputs(args.output, embeddings, kept, failures)
    index_path, failed_path = side_paths(args.output)
    failed = f"{len(failures)} failed (listed in {failed_path})" if failures else "0 failed"
    print(
        f"embedded {len(kept)} of {len(paths)} images, {failed}, {len(paths) / seconds:.1f} images/s; "
        f"wrote {args.output} ({embeddings.shape[0]} x {embeddings.shape[1]} float32) and {index_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
