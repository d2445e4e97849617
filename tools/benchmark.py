"""Benchmarks: each sub-command measures a candidate and its reference side by side in one process.

    python -m tools.benchmark tokenizer  [--encoder NAME] [--batch 32] [--repeats 10] [--warmup 2] [--json OUT.json]
    python -m tools.benchmark evaluation [...same options...] [--batches 2]
    python -m tools.benchmark predictor  [...same options...] [--backbone mobilenetv3_large_100]

Candidate and reference runs are interleaved (A B A B ...) so shared-machine noise hits both, and the medians are
compared; on CUDA the device is synchronised around every timed run. One line per figure is printed: candidate,
reference, their ratio, the target and whether it is met. ``--json`` writes the same results as a dict.

Figures:
  tokenizer   tokenizer_vs_patch_embed  forward + backward of the landmark tokenizer (grid_sample at the K template
                                        landmarks) / timm PatchEmbed at the same token count and width (lower is
                                        better, target <= 1.5)
              tokenizer_share_of_step   tokenizer forward + backward / the encoder's forward + backward (target <= 0.10)
  evaluation  evaluation_no_flip        images/s of embed_images(flip=False) / bare model(batch) under inference_mode
              evaluation_flip           images/s of embed_images(flip=True) / bare model(batch) + model(flipped batch)
                                        (the same number of forwards, so the ratio is the path's overhead; >= 0.8)
  predictor   predictor_vs_encoder      images/s of the learned landmark predictor / the encoder's inference rate on
                                        the same batch (a reference, no target)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lafs.cli import entry_point, int_in_range
from tools.benchmarks import model_figures
from tools.benchmarks.timing import DEFAULT_ENCODER, format_figure


@dataclass(frozen=True)
class SubCommand:
    """One sub-command: the function measuring its figures, its help line and its own options beyond the common ones."""

    run: Callable[..., dict[str, Any]]
    help: str
    add_options: Callable[[argparse.ArgumentParser], None] | None = None


def _evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int_in_range(1), default=2, help="batches per timed run (default 2)")


def _predictor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="mobilenetv3_large_100", help="timm backbone of the predictor")


SUB_COMMANDS: dict[str, SubCommand] = {
    "tokenizer": SubCommand(model_figures.bench_tokenizer, "landmark tokenizer vs timm PatchEmbed; share of step"),
    "evaluation": SubCommand(model_figures.bench_evaluation, "embed_images vs bare inference", _evaluation_options),
    "predictor": SubCommand(model_figures.bench_predictor, "landmark predictor vs encoder", _predictor_options),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"registered encoder (default {DEFAULT_ENCODER})")
    common.add_argument("--batch", type=int_in_range(1), default=32, help="images per batch (default 32)")
    common.add_argument("--repeats", type=int_in_range(1), default=10, help="timed runs of each side (default 10)")
    common.add_argument("--warmup", type=int_in_range(0), default=2, help="untimed runs of each side (default 2)")
    common.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    common.add_argument("--threads", type=int_in_range(1), default=None, help="torch CPU threads (default: torch's)")
    common.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write the results dict here")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, sub in SUB_COMMANDS.items():
        sub_parser = commands.add_parser(name, parents=[common], help=sub.help)
        if sub.add_options is not None:
            sub.add_options(sub_parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark, print one line per figure and optionally write the JSON results."""
    args = vars(build_parser().parse_args(argv))
    command, threads, output = args.pop("command"), args.pop("threads"), args.pop("json")
    if threads is not None:
        torch.set_num_threads(threads)
    result = SUB_COMMANDS[command].run(**args)
    for fig in result["figures"]:
        if not all(math.isfinite(fig[key]) for key in ("candidate", "reference", "ratio")):
            print(f"warning: {fig['name']} has a non-finite value", file=sys.stderr)
    print(f"{command}: {result['encoder']}, batch {result['batch']}, {result['device']}, {result['threads']} threads")
    for fig in result["figures"]:
        print(format_figure(fig))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
