"""The few-shot protocol as one command: does pretraining help verify people the model never saw?

    python -m tools.fewshot --input DIR --output DIR [--align] [--unseen N | --split SPLIT_JSON] [--shots 5 ...]
        [--seeds 0 1 2]
        [--arms lafs,dino,none] [--regularisers none,unpg,coreface,intraloss,cluster,landmark]
        [--pretrain-steps N] [--finetune-steps N] [--encoder NAME] [--pairs N] [--workers N]
        [--pretrain-set key=value ...] [--finetune-set key=value ...]

DIR holds one sub-folder per identity: aligned 112 x 112 crops, or photos with --align (aligned once into
OUTPUT/aligned); `--input synthetic` writes the built-in synthetic faces (with their exact landmarks) instead.
MediaPipe landmarks (the pretraining config's encoder.landmark_set, or --landmark-set) are computed once
(OUTPUT/landmarks-SET). For each seed, --unseen identities (a seeded draw
from the sorted names; with --split, the fixed held-aside identities of a development split, the same for every
seed, with the same pairs) are held out and give --pairs verification pairs, half same, half different. Each arm
pretrains on the other (seen) identities without labels for --pretrain-steps (lafs: landmark views; dino: DINO's
random-crop views on the regular patch grid; none: no pretraining), then fine-tunes on --shots images per seen
identity for --finetune-steps with each regulariser (none = the ArcFace head alone), and every encoder, also before
fine-tuning, is verified on the unseen pairs. The base recipes are configs/fewshot/{pretrain,finetune}.yaml;
--pretrain-set / --finetune-set override their keys. Running the same command again resumes where it stopped.

Writes OUTPUT/results.json (a record per arm, shots, regulariser and seed, and the mean and spread over seeds),
OUTPUT/results.md (the table) and OUTPUT/results.png (accuracy and AUC per arm with the spread over seeds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lafs.cli import entry_point, int_in_range


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.fewshot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True, metavar="DIR", help="identity folder, or 'synthetic'")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="results and every stage")
    parser.add_argument("--align", action="store_true", help="align the photos to the ArcFace crop first")
    parser.add_argument("--unseen", type=int_in_range(2), default=5, help="identities held out (default 5)")
    parser.add_argument("--split", type=Path, default=None, metavar="SPLIT_JSON",
                        help="a fixed split (tools.make_bin --split's split.json) instead of --unseen")  # fmt: skip
    parser.add_argument("--shots", type=int_in_range(1), nargs="+", default=[5], help="images per seen identity")
    parser.add_argument("--seeds", type=int_in_range(0), nargs="+", default=[0, 1, 2], help="repeats (default 0 1 2)")
    parser.add_argument("--arms", type=_names, default=["lafs", "dino", "none"], help="comma-separated pretraining")
    parser.add_argument("--regularisers", type=_names, default=["none"], help="comma-separated (default none)")
    parser.add_argument("--pretrain-steps", type=int_in_range(0), default=600, help="per arm (default 600)")
    parser.add_argument("--finetune-steps", type=int_in_range(2), default=300, help="per run (default 300)")
    parser.add_argument("--encoder", default="lafs_vit_nano_p8_112", help="registered encoder (default nano)")
    parser.add_argument("--landmark-set", default="", metavar="SET",
                        help="MediaPipe set of the lafs/none tokens (default: the pretraining config's)")  # fmt: skip
    parser.add_argument("--synthetic-identities", type=int_in_range(4), default=40, help="with --input synthetic")
    parser.add_argument("--synthetic-images", type=int_in_range(2), default=20, help="per synthetic identity")
    parser.add_argument("--pairs", type=int_in_range(10), default=600, help="unseen pairs (default 600)")
    parser.add_argument("--workers", type=int_in_range(1), default=2, help="alignment/landmark processes")
    parser.add_argument("--pretrain-config", type=Path, default=Path("configs/fewshot/pretrain.yaml"))
    parser.add_argument("--finetune-config", type=Path, default=Path("configs/fewshot/finetune.yaml"))
    parser.add_argument("--pretrain-set", nargs="+", default=[], metavar="KEY=VALUE", help="pretraining overrides")
    parser.add_argument("--finetune-set", nargs="+", default=[], metavar="KEY=VALUE", help="fine-tuning overrides")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder of other files")
    return parser


def read_held_aside(path: Path) -> list[str]:
    """The held-aside identity names of a split.json (`tools.make_bin --split`); a bad file is a one-line error."""
    from lafs.errors import DataError
    from lafs.files import read_json

    try:
        names = read_json(path)["held_aside_identities"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"--split {path}: not a split.json of tools.make_bin --split ({error})") from None
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise DataError(f"--split {path}: held_aside_identities must be a non-empty list of names")
    return names


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from finetune.fewshot import FewShotConfig, run_protocol
    from lafs.fewshot import summarise, write_results
    from lafs.fewshot.results import format_markdown
    from lafs.files import claim_output_folder

    held_aside = read_held_aside(args.split) if args.split is not None else []
    cfg = FewShotConfig(
        held_aside=held_aside,
        input=args.input,
        output=args.output,
        align=args.align,
        unseen=args.unseen,
        shots=args.shots,
        seeds=args.seeds,
        arms=args.arms,
        regularisers=args.regularisers,
        pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps,
        encoder=args.encoder,
        landmark_set=args.landmark_set,
        synthetic_identities=args.synthetic_identities,
        synthetic_images=args.synthetic_images,
        pairs=args.pairs,
        workers=args.workers,
        pretrain_config=args.pretrain_config,
        finetune_config=args.finetune_config,
        pretrain_overrides=args.pretrain_set,
        finetune_overrides=args.finetune_set,
    )
    cfg.validate()
    claim_output_folder(args.output, "lafs-fewshot", args.overwrite, inputs=[args.input])
    records = run_protocol(cfg)
    setup = {
        "input": str(args.input),
        "unseen identities": f"{len(held_aside)} (fixed: {args.split})" if held_aside else args.unseen,
        "pairs": args.pairs,
        "encoder": args.encoder,
        "landmarks": cfg.landmark_set,
        "pretrain steps": args.pretrain_steps,
        "finetune steps": args.finetune_steps,
        "seeds": " ".join(map(str, args.seeds)),
    }
    written = write_results(records, setup, args.output)
    print(format_markdown(summarise(records), setup))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
