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
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lafs.cli import entry_point, int_in_range
from lafs.errors import ConfigError

DEFAULT_ENCODER = "lafs_vit_nano_p8_112"
IMAGE_SIZE = 112
PATCH_SIZE = 8


# --------------------------------------------------------------------------------------------------------- timing --


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a one-line `ConfigError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return torch.device(name)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    candidate: Callable[[], object],
    reference: Callable[[], object],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> tuple[float, float]:
    """Median seconds of ``candidate()`` and ``reference()``, run interleaved (warm-up runs are not timed)."""
    for _ in range(warmup):
        candidate()
        reference()
    _synchronise(device)
    times: dict[str, list[float]] = {"candidate": [], "reference": []}
    for _ in range(repeats):
        for key, fn in (("candidate", candidate), ("reference", reference)):
            _synchronise(device)
            start = time.perf_counter()
            fn()
            _synchronise(device)
            times[key].append(time.perf_counter() - start)
    return statistics.median(times["candidate"]), statistics.median(times["reference"])


def figure(
    name: str, candidate: float, reference: float, unit: str, target: float | None, higher_is_better: bool
) -> dict[str, Any]:
    """One figure: candidate, reference, ratio = candidate / reference, and whether the ratio meets its target."""
    ratio = candidate / reference
    met = None if target is None else (ratio >= target if higher_is_better else ratio <= target)
    return {
        "name": name,
        "candidate": candidate,
        "reference": reference,
        "unit": unit,
        "ratio": ratio,
        "target": target,
        "target_op": ">=" if higher_is_better else "<=",
        "met": met,
    }


def format_figure(fig: dict[str, Any]) -> str:
    """The one printed line of a figure."""
    if fig["target"] is None:
        verdict = "(no target)"
    else:
        verdict = f"(target {fig['target_op']} {fig['target']:g}) {'met' if fig['met'] else 'MISSED'}"
    return (
        f"{fig['name']}: candidate {fig['candidate']:.4g} {fig['unit']}, reference {fig['reference']:.4g} "
        f"{fig['unit']}, ratio {fig['ratio']:.3f} {verdict}"
    )


def _encoder(name: str, device: torch.device) -> Any:
    from lafs.models import EncoderConfig, build_encoder

    return build_encoder(EncoderConfig(name=name)).to(device)


def _images(batch: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1).to(device)


# ------------------------------------------------------------------------------------------------------ tokenizer --


def bench_tokenizer(
    encoder: str = DEFAULT_ENCODER, batch: int = 32, repeats: int = 10, warmup: int = 2, device: str = "auto"
) -> dict[str, Any]:
    """Landmark tokenizer vs timm PatchEmbed (forward + backward), and its share of the encoder's training step."""
    from timm.layers import PatchEmbed

    from lafs.models.tokenizer import LandmarkPatchEmbed

    dev = resolve_device(device)
    model = _encoder(encoder, dev).train()
    width, tokens = int(model.embed_dim), int(model.num_landmarks)
    tokenizer = LandmarkPatchEmbed(tokens, img_size=IMAGE_SIZE, patch_size=PATCH_SIZE, embed_dim=width).to(dev)
    grid = PatchEmbed(img_size=IMAGE_SIZE, patch_size=PATCH_SIZE, in_chans=3, embed_dim=width).to(dev)
    if grid.num_patches != tokens:
        raise ConfigError(f"{encoder} has {tokens} tokens but a {PATCH_SIZE}-pixel grid gives {grid.num_patches}")
    images = _images(batch, dev)
    landmarks = model.template.expand(batch, -1, -1).contiguous()

    def tokenizer_step() -> None:
        tokenizer.zero_grad(set_to_none=True)
        tokenizer(images, landmarks).square().mean().backward()

    def grid_step() -> None:
        grid.zero_grad(set_to_none=True)
        grid(images).square().mean().backward()

    def encoder_step() -> None:
        model.zero_grad(set_to_none=True)
        model(images).square().mean().backward()

    tok, ref = time_side_by_side(tokenizer_step, grid_step, repeats, warmup, dev)
    tok_again, step = time_side_by_side(tokenizer_step, encoder_step, repeats, warmup, dev)
    figures = [
        figure("tokenizer_vs_patch_embed", tok * 1e3, ref * 1e3, "ms", 1.5, higher_is_better=False),
        figure("tokenizer_share_of_step", tok_again * 1e3, step * 1e3, "ms", 0.10, higher_is_better=False),
    ]
    return _result("tokenizer", encoder, batch, repeats, warmup, dev, figures, tokens=tokens, width=width)


# ----------------------------------------------------------------------------------------------------- evaluation --


def bench_evaluation(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    batches: int = 2,
) -> dict[str, Any]:
    """Images/s of `embed_images` (flip and no flip) vs the encoder's bare inference on normalised batches."""
    from lafs.data.collate import normalize_images
    from lafs.evaluation.verification import embed_images

    dev = resolve_device(device)
    model = _encoder(encoder, dev).eval()
    count = batch * batches
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    ready = [
        normalize_images(torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2).contiguous()).to(dev)
        for i in range(0, count, batch)
    ]

    def bare(flip: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for chunk in ready:
                    model(chunk)
                    if flip:
                        model(torch.flip(chunk, dims=[3]))

        return run

    figures = []
    for flip in (False, True):

        def path(flip: bool = flip) -> None:
            embed_images(model, images, batch_size=batch, flip=flip, device=dev)

        seconds, reference = time_side_by_side(path, bare(flip), repeats, warmup, dev)
        name = "evaluation_flip" if flip else "evaluation_no_flip"
        figures.append(figure(name, count / seconds, count / reference, "images/s", 0.8, higher_is_better=True))
    return _result("evaluation", encoder, batch, repeats, warmup, dev, figures, images=count)


# ------------------------------------------------------------------------------------------------------ predictor --


def bench_predictor(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    backbone: str = "mobilenetv3_large_100",
) -> dict[str, Any]:
    """Images/s of the learned landmark predictor vs the encoder's inference rate on the same batch."""
    from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor

    dev = resolve_device(device)
    model = _encoder(encoder, dev).eval()
    predictor = build_landmark_predictor(
        LandmarkPredictorConfig(backbone=backbone, landmark_set=model.landmark_set, image_size=IMAGE_SIZE)
    )
    predictor = predictor.to(dev).eval()
    images = _images(batch, dev)

    def run(module: torch.nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                module(images)

        return call

    seconds, reference = time_side_by_side(run(predictor), run(model), repeats, warmup, dev)
    figures = [figure("predictor_vs_encoder", batch / seconds, batch / reference, "images/s", None, True)]
    return _result("predictor", encoder, batch, repeats, warmup, dev, figures, backbone=backbone)


# ----------------------------------------------------------------------------------------------------------- main --


def _result(
    command: str,
    encoder: str,
    batch: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    figures: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "command": command,
        "encoder": encoder,
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(device),
        "machine": machine,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        **extra,
        "figures": figures,
    }


BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "tokenizer": bench_tokenizer,
    "evaluation": bench_evaluation,
    "predictor": bench_predictor,
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
    commands.add_parser("tokenizer", parents=[common], help="landmark tokenizer vs timm PatchEmbed; share of step")
    evaluation = commands.add_parser("evaluation", parents=[common], help="embed_images vs bare inference")
    evaluation.add_argument("--batches", type=int_in_range(1), default=2, help="batches per timed run (default 2)")
    predictor = commands.add_parser("predictor", parents=[common], help="landmark predictor vs encoder inference")
    predictor.add_argument("--backbone", default="mobilenetv3_large_100", help="timm backbone of the predictor")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark, print one line per figure and optionally write the JSON results."""
    args = vars(build_parser().parse_args(argv))
    command, threads, output = args.pop("command"), args.pop("threads"), args.pop("json")
    if threads is not None:
        torch.set_num_threads(threads)
    result = BENCHMARKS[command](**args)
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
