"""Benchmarks: each sub-command measures a candidate and its reference side by side in one process.

    python -m tools.benchmark tokenizer  [--encoder NAME] [--batch 32] [--repeats 10] [--warmup 2] [--json OUT.json]
    python -m tools.benchmark evaluation [...same options...] [--batches 2]
    python -m tools.benchmark predictor  [...same options...] [--backbone mobilenetv3_large_100]
    python -m tools.benchmark landmarks  [...same options...] [--images 640] [--workers ALL_CORES]
    python -m tools.benchmark pretrain-step [...same options...] [--num-local 8] [--local-landmarks 36] [--out-dim 4096]
                                          [--precision auto|fp32|bf16]
    python -m tools.benchmark finetune-step [...same options...] [--classes 1000] [--precision auto|fp32|bf16]
    python -m tools.benchmark recipe-step [...same options; --batch 64, --encoder: the recipe's...] [--classes 249]
    python -m tools.benchmark data       [...same options...] [--images 128] [--num-local 8]
    python -m tools.benchmark token-geometry [...same options...] [--landmarks CACHE]
    python -m tools.benchmark gpu        [...same options; --encoder defaults to lafs_vit_base_p8_112...] [--compile]
                                          [--precision ...] [--matmul-size N] [--peak-tflops T] [--out-dim 65536]
    python -m tools.benchmark partial-fc [...same options; --batch: rows per process...] [--classes 100000 1000000]
                                          [--dim 32] [--processes 8] [--sample-rate 0.1] [--gpu-dim 512]
                                          [--gpu-batch 128]
    python -m tools.benchmark scale      [--records 10000000] [--reads 20000] [--workers 2] [--folder DIR] [--keep]

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
  landmarks   mediapipe_per_process     images/s of the tool's MediaPipe extraction in one process / bare decoding of
                                        the same JPEGs (no target; the ratio is decoding's share of the time)
              mediapipe_scaling         images/s with --workers W processes / with one: the speed-up (target >= 0.9 W)
  pretrain-step pretrain_step_vs_plain_vit  images/s of a LAFS pretraining step (student over 2 globals of K landmarks
                                        + N locals of k ids, teacher over the globals, DINO loss, backward, clip 3,
                                        AdamW, EMA) / the same step with a plain timm ViT of the same shape on grid
                                        images of K and k patches (target >= 0.9). --out-dim: DINO prototypes, 4096 by
                                        default so CPU runs stay short (LAFS: 65536 to 100000)
  finetune-step finetune_step_vs_plain_vit  images/s of a LAFS fine-tuning step (encoder, CosFace margin loss over
                                        --classes, backward, AdamW with layer decay) / the same with a plain timm ViT
                                        on a grid of K patches (target >= 0.9)
  data        worker_vs_decode          images/s of what a loader worker does per pretraining image when the views
                                        are made on the accelerator (read + decode + resize + landmarks) / bare OpenCV
                                        decoding of the same JPEG files, one thread (target >= 0.5)
              worker_views_vs_decode    the same with all 2 + N views made in the worker (views.make_on=loader): no
                                        target, it shows what moving the views off the workers saves
              worker_views_growth       ms/image of worker-made views at --num-local / at 2 locals (no target; the
                                        device path's worker code does not depend on the number of views)
              device_views_vs_decode    images/s of DeviceViews making a batch's 2 + N views on --device / bare
                                        decoding (no target)
  recipe-step recipe_step_vs_plain_timm images/s of the CPU recipe's step (configs/cpu/finetune.yaml: timm
                                        ResNet-18 at 64 px, neck, CosFace, device augmentation, SGD) / a plain-PyTorch
                                        step of the same timm model with an ArcFace head and flips (target >= 0.9)
  gpu         finetune_mfu              achieved FLOP/s of a LAFS fine-tuning step (FlopCounterMode FLOPs / median
                                        step seconds) / peak FLOP/s of a large bf16 matmul (fp32 on CPU) (>= 0.40)
              pretrain_mfu              the same for a pretraining step at 2 x K + 8 x 36 tokens (target >= 0.35);
                                        images/s and peak memory of both steps are in the JSON
  partial-fc  partial_fc_memory_<C>     bytes one process holds for the head (centres, gradient, AdamW moments,
                                        tensors saved for backward), process 0 of --processes with Partial FC at
                                        --sample-rate / the replicated head (no target; the encoder is left out)
              partial_fc_step_<C>       ms of one head step (forward, CE, backward, AdamW), the same two sides
              partial_fc_gpu_projection_<C>  the memory figure projected to --gpu-dim, --gpu-batch per GPU on
                                        --processes GPUs, from the bytes per logit measured here (GiB)
  token-geometry {global,local}_{coverage,overlap,on_view}_{fit}  the pretraining views' tokens under each
                                        encoder.landmark_fit (candidate) against none (reference): share of the view
                                        covered by patches, mean patches per covered pixel, share of token centres on
                                        the view (no targets; views from the template, or a landmark cache)
              attention_mask_cost       encoder forward + backward with the off-view tokens' attention mask / the
                                        same without a mask (no target)
  scale       open_seconds              opening a --records .rec with a landmark cache as training does, the index
                                        cached and memory-mapped / parsed into the process (target <= 0.1)
              process_anonymous_mib     heap growth of that process after the open and --reads random items (<= 0.1)
              worker_anonymous_mib      the same in each of --workers spawned workers handed the pickled dataset
                                        (the largest; target <= 0.1)
              random_reads_per_s        random items/s (read, decode, resize, landmark lookup), both sides in one
                                        process, interleaved blocks of --reads / --repeats (target >= 0.9)
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

from lafs.cli import add_threads_option, entry_point, int_in_range, set_threads
from tools.benchmarks import (
    data_pipeline,
    gpu,
    landmark_extraction,
    model_figures,
    partial_fc,
    recipe_step,
    scale,
    token_geometry,
    training_step,
)
from tools.benchmarks.common import DEFAULT_ENCODER, format_figure


@dataclass(frozen=True)
class SubCommand:
    """One sub-command: the function measuring its figures, its help line and its own options beyond the common ones."""

    run: Callable[..., dict[str, Any]]
    help: str
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    encoder: str = DEFAULT_ENCODER  # the --encoder default


def _evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int_in_range(1), default=2, help="batches per timed run (default 2)")


def _predictor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="mobilenetv3_large_100", help="timm backbone of the predictor")


def _landmarks_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int_in_range(1), default=640, help="synthetic JPEG faces (default 640)")
    parser.add_argument("--workers", type=int_in_range(1), default=None, help="processes (default: all cores)")


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int_in_range(1), default=128, help="synthetic JPEG faces (default 128)")
    parser.add_argument("--num-local", type=int_in_range(0), default=8, help="local views (default 8, LAFS)")


def _token_geometry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--landmarks", type=Path, default=None, help="a landmark cache (default: the template)")


def _precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="autocast (auto: bf16 on CUDA, else fp32)"
    )


def _views_options(parser: argparse.ArgumentParser, out_dim: int) -> None:
    parser.add_argument("--num-local", type=int_in_range(0), default=8, help="local views (default 8, LAFS)")
    parser.add_argument("--local-landmarks", type=int_in_range(1), default=36, help="ids per local view (default 36)")
    parser.add_argument("--out-dim", type=int_in_range(1), default=out_dim, help=f"DINO prototypes (default {out_dim})")


def _pretrain_step_options(parser: argparse.ArgumentParser) -> None:
    _precision_option(parser)
    _views_options(parser, out_dim=4096)  # 4096, not LAFS's 65536+: the prototype layer would dominate CPU runs


def _finetune_step_options(parser: argparse.ArgumentParser) -> None:
    _precision_option(parser)
    parser.add_argument("--classes", type=int_in_range(2), default=1000, help="margin-head classes (default 1000)")


def _recipe_step_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=int_in_range(2), default=249, help="identities (default 249: cfp349's dev)")
    parser.set_defaults(batch=64)  # the recipe's batch


def _gpu_options(parser: argparse.ArgumentParser) -> None:
    _finetune_step_options(parser)
    _views_options(parser, out_dim=65536)  # DINO's default prototype count: the real pretraining head
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (FLOPs are counted eagerly)")
    size_help = "side of the peak matmul (CUDA 8192, CPU 1024)"
    parser.add_argument("--matmul-size", type=int_in_range(1), default=None, help=size_help)
    parser.add_argument("--peak-tflops", type=float, default=None, help="use this peak (e.g. a datasheet's) instead")


def _partial_fc_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=int_in_range(2), nargs="+", default=[100_000, 1_000_000],
                        help="class counts (default 100000 1000000)")  # fmt: skip
    parser.add_argument("--dim", type=int_in_range(1), default=32, help="embedding width (default 32: CPU-sized)")
    parser.add_argument("--processes", type=int_in_range(2), default=8, help="processes sharing the classes (8)")
    parser.add_argument("--sample-rate", type=float, default=0.1, help="Partial FC's sampled share (default 0.1)")
    parser.add_argument("--gpu-dim", type=int_in_range(1), default=512, help="projection: embedding width (512)")
    parser.add_argument("--gpu-batch", type=int_in_range(1), default=128, help="projection: images per GPU (128)")


def _scale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int_in_range(1), default=10_000_000, help="default 10,000,000")
    parser.add_argument("--reads", type=int_in_range(1), default=20_000, help="random items per process")
    parser.add_argument("--workers", type=int_in_range(1), default=2, help="spawned workers (default 2)")
    parser.add_argument("--folder", type=Path, default=None, help="scratch folder's parent (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch data (printed) instead of removing it")


SUB_COMMANDS: dict[str, SubCommand] = {
    "tokenizer": SubCommand(model_figures.bench_tokenizer, "landmark tokenizer vs timm PatchEmbed; share of step"),
    "evaluation": SubCommand(model_figures.bench_evaluation, "embed_images vs bare inference", _evaluation_options),
    "predictor": SubCommand(model_figures.bench_predictor, "landmark predictor vs encoder", _predictor_options),
    "landmarks": SubCommand(
        landmark_extraction.bench_landmarks,
        "MediaPipe extraction: one process, and W workers vs one (CPU; --encoder, --batch, --device unused)",
        _landmarks_options,
    ),
    "pretrain-step": SubCommand(
        training_step.bench_pretrain_step, "LAFS pretraining step vs plain timm ViT", _pretrain_step_options
    ),
    "finetune-step": SubCommand(
        training_step.bench_finetune_step, "LAFS fine-tuning step vs plain timm ViT", _finetune_step_options
    ),
    "recipe-step": SubCommand(
        recipe_step.bench_recipe_step, "the CPU recipe's step vs a plain timm model's", _recipe_step_options, ""
    ),
    "gpu": SubCommand(
        gpu.bench_gpu, "MFU of the LAFS training steps; images/s and peak memory", _gpu_options, gpu.GPU_ENCODER
    ),
    "data": SubCommand(
        data_pipeline.bench_data_pipeline, "loader worker images/s vs bare JPEG decoding; device views", _data_options
    ),
    "partial-fc": SubCommand(
        partial_fc.bench_partial_fc,
        "Partial FC vs the replicated head: memory per process, step time (--encoder unused)",
        _partial_fc_options,
    ),
    "token-geometry": SubCommand(
        token_geometry.bench_token_geometry, "patch coverage of the views per landmark_fit", _token_geometry_options
    ),
    "scale": SubCommand(
        scale.bench_scale,
        "a .rec of millions of records: open time, memory per process and worker, reads/s (--encoder, --batch unused)",
        _scale_options,
        "",
    ),
}


def _common_options(parser: argparse.ArgumentParser, encoder: str) -> None:
    # Added to each sub-command's own parser (not shared through parents=): a per-command default stays its own.
    parser.add_argument("--encoder", default=encoder, help=f"registered encoder (default {encoder})")
    parser.add_argument("--batch", type=int_in_range(1), default=32, help="images per batch (default 32)")
    parser.add_argument("--repeats", type=int_in_range(1), default=10, help="timed runs of each side (default 10)")
    parser.add_argument("--warmup", type=int_in_range(0), default=2, help="untimed runs of each side (default 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    add_threads_option(parser)
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write the results dict here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, sub in SUB_COMMANDS.items():
        sub_parser = commands.add_parser(name, help=sub.help)
        _common_options(sub_parser, sub.encoder)
        if sub.add_options is not None:
            sub.add_options(sub_parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark, print one line per figure and optionally write the JSON results."""
    args = vars(build_parser().parse_args(argv))
    command, threads, output = args.pop("command"), args.pop("threads"), args.pop("json")
    set_threads(threads)
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
