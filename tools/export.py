"""Export an encoder as a stand-alone folder (``model.safetensors`` + ``config.json``), optionally with ONNX.

    python -m tools.export --input RUN_DIR_OR_ENCODER_FOLDER --output FOLDER [--onnx] [--faces N] [--opset 17]
                           [--landmarks auto|template|mediapipe|predictor] [--overwrite]

--input is a training run directory (its ``encoder/`` is used) or an exported encoder folder. The output folder
loads with ``lafs.export.load_encoder`` and with ``timm.create_model`` (see ``lafs/export/weights.py``) and records
the landmark source the encoder was trained with (``landmark_source``). With --onnx it also holds ``model.onnx``
(images + landmarks) and ``model_images_only.onnx`` (landmarks inside the graph: the learned predictor of a
fine-tuning run that trained one, kept in ``landmark_predictor/``; else the template), or for an image-only
encoder (IResNet, timm:) one ``model.onnx`` (images), each checked against PyTorch on N synthetic faces of the
encoder's landmark set; the parity and latency are printed and recorded in config.json.
A graph cannot run MediaPipe: for an encoder trained on MediaPipe landmarks the images-only file is not written
(``model.onnx`` takes them as input) unless --landmarks template asks for it on the template, departing from
training. --landmarks chooses what the images-only graph computes (default auto: what the encoder was trained with;
another choice warns). --output must be missing, empty or a previous export (else pass --overwrite); only the
files the export writes are replaced, each whole, and nothing else in the folder is touched. An --output that is,
or holds, the input is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import entry_point, int_in_range
from lafs.data.synthetic import synthetic_batch
from lafs.errors import ConfigError, DataError
from lafs.export import (
    EXPORT_FORMAT,
    ONNX_OPSET,
    encoder_folder,
    images_only_landmarks,
    images_only_note,
    load_encoder_and_predictor,
    predictor_folder,
    recorded_landmark_source,
    save_encoder,
    save_encoder_onnx,
)
from lafs.files import prepare_output_folder
from lafs.landmarks.provenance import AUTO, add_landmark_options
from lafs.models import takes_landmarks


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True, metavar="RUN_DIR_OR_FOLDER", help="run dir or encoder")
    parser.add_argument("--output", type=Path, required=True, metavar="FOLDER", help="encoder folder to write")
    parser.add_argument("--onnx", action="store_true", help="also write and check model.onnx, model_images_only.onnx")
    parser.add_argument("--faces", type=int_in_range(1), default=8, metavar="N", help="faces for the parity check")
    parser.add_argument("--opset", type=int_in_range(16), default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that is not a previous export")
    add_landmark_options(parser, workers=False)
    args = parser.parse_args(argv)

    if args.landmarks != AUTO and not args.onnx:
        raise ConfigError("--landmarks chooses what the images-only ONNX file computes inside; it needs --onnx")
    if args.input.suffix == ".onnx":
        raise DataError(f"{args.input}: an ONNX file cannot be re-exported; give a run directory or encoder folder")
    encoder = encoder_folder(args.input)
    inputs = [args.input, encoder, *filter(None, [predictor_folder(encoder)])]
    prepare_output_folder(args.output, EXPORT_FORMAT, args.overwrite, inputs)  # refuse before loading anything
    model, predictor = load_encoder_and_predictor(args.input)  # a fine-tuned LAFS model may have a predictor
    model.eval()
    landmark_source, recorded = recorded_landmark_source(encoder)
    source = {"input": str(args.input.resolve())}
    trained = f"trained with {landmark_source} landmarks" + ("" if recorded else " (not recorded; assumed)")
    wrote = f"wrote {args.output}: {model.pretrained_cfg['architecture']}, {model.num_features}-d embeddings, {trained}"
    if not args.onnx:
        save_encoder(model, args.output, source, predictor, args.overwrite, inputs, landmark_source)
        print(wrote)
        return 0

    # An image-only encoder ignores the landmarks: any set renders the same faces.
    landmark_set = model.landmark_set if takes_landmarks(model) else "mediapipe49"
    size = int(model.pretrained_cfg["input_size"][-1])  # the encoder's own input: 64 px for the CPU recipe
    images, landmarks = synthetic_batch(landmark_set, args.faces, image_size=size)
    graph = images_only_landmarks(landmark_source, args.landmarks, predictor is not None)
    reports = save_encoder_onnx(
        model,
        args.output,
        images,
        landmarks,
        source=source,
        opset=args.opset,
        landmark_predictor=predictor,
        overwrite=args.overwrite,
        inputs=inputs,
        landmark_source=landmark_source,
        graph_landmarks=graph,
    )
    print(wrote)
    if takes_landmarks(model):
        print(images_only_note(graph, landmark_source))
    print(f"parity on {args.faces} synthetic faces ({landmark_set}), latency at batch 8 on CPU:")
    for name, report in reports.items():
        print(
            f"  {name:<24} min cosine {report['min_cosine']:.7f}  max abs diff {report['max_abs_diff']:.2e}  "
            f"ms/image PyTorch {report['pytorch_ms_per_image']:.2f} vs ONNX {report['onnx_ms_per_image']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
