"""Import a released LAFS checkpoint (szlbiubiubiu/LAFS_CVPR2024) as an encoder folder.

    python -m tools.import_checkpoint --input FILE --output FOLDER [--landmark-network FILE] [--overwrite]
    python -m tools.import_checkpoint --format arcface_torch --input backbone.pth --output FOLDER

--input is a released .pth: a supervised Part fViT state dict (with or without DDP's ``module.``), a
self-supervised LAFS / DINO checkpoint (its teacher is imported), or a ``{'model': ...}`` checkpoint with
``encoder.`` names. Only tensors and ``argparse.Namespace`` are unpickled: a file that needs anything else is refused.

FOLDER receives the Part fViT (model.safetensors + config.json, architecture ``lafs_partfvit_b_p8_112``), its
landmark network in ``landmark_predictor/`` and, for supervised checkpoints, the CosFace classifier in
``margin_head.safetensors``. Self-supervised checkpoints hold no landmark network: --landmark-network takes it from a
released supervised checkpoint, as the released fine-tuning does (without one the encoder samples the plain 8 x 8
grid). The folder works with tools.evaluate, tools.embed, tools.verify, tools.export --onnx and finetune/train.py
``init=FOLDER landmarks.source=predictor landmarks.predictor=FOLDER/landmark_predictor``; pretraining takes the
landmark network as ``landmark_predictor=FOLDER/landmark_predictor``. --output must be missing, empty or a previous
encoder folder (else pass --overwrite).

--format arcface_torch reads an insightface arcface_torch IResNet (``backbone.pth``, ``model.pt``, or the
``state_dict_backbone`` of a ``checkpoint_gpu_*.pt``): depth, widths and embedding size come from the tensors, and the
state dict loads strictly into ``iresnet18/34/50/100/200`` (the same parameter names).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import entry_point


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.import_checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", type=Path, required=True, metavar="FILE", help="released checkpoint (.pth)")
    parser.add_argument("--output", type=Path, required=True, metavar="FOLDER", help="encoder folder to write")
    parser.add_argument(
        "--landmark-network", type=Path, default=None, metavar="FILE", help="released checkpoint with stn.* weights"
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that is not an encoder folder")
    parser.add_argument("--format", choices=("released", "arcface_torch"), default="released",
                        help="released LAFS (default) or an arcface_torch IResNet backbone")  # fmt: skip
    args = parser.parse_args(argv)
    if args.format == "arcface_torch":
        from lafs.export.arcface_torch import import_arcface_torch

        name, arguments = import_arcface_torch(args.input, args.output, args.overwrite)
        described = ", ".join(f"{key} {value}" for key, value in arguments.items())
        print(f"read {args.input}: arcface_torch backbone -> {name} ({described})")
        print(f"wrote {args.output}")
        return 0

    from lafs.export.released import import_released_checkpoint

    summary = import_released_checkpoint(args.input, args.output, args.landmark_network, args.overwrite)
    shape = ", ".join(f"{key} {value}" for key, value in summary.model_args.items())
    print(f"read {args.input}: {summary.layout}")
    print(f"  encoder: {summary.architecture} ({shape}), {summary.encoder_tensors} tensors")
    if summary.landmark_network:
        print(f"  landmark network: released MobileNetV3-large from {summary.landmark_network} -> landmark_predictor/")
    else:
        print("  landmark network: none (pass --landmark-network FILE; until then tokens sit on the 8 x 8 grid)")
    if summary.classifier is not None:
        print(f"  classifier: loss.weight {summary.classifier} -> margin_head.safetensors (CosFace s=64 m=0.4)")
    for group, reason in summary.set_aside.items():
        print(f"  not imported: {group}: {reason}")
    print(f"wrote {summary.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
