"""The GPU check: every figure only a GPU can give, in one command and one JSON (`make gpu-check`).

    python -m tools.gpu_check [--output runs/gpu_check.json] [--device auto|cuda|cpu] [--tiny]

1. MFU, images/s and peak memory of a fine-tuning step of `lafs_vit_base_p8_112` and `iresnet100`, and of a LAFS
   pretraining step of the ViT (`python -m tools.benchmark gpu`), in bf16, eager and with ``torch.compile``;
2. a 50-step LAFS pretraining run and a 50-step fine-tuning run through the engine on synthetic faces, views made on
   the device, bf16;
3. the views made on the device against the same views made on the CPU (landmarks exactly, pixels within 0.5 grey
   levels: the worker/device renderer equality, on CUDA).

Meant for a GPU (under 10 minutes on one H100/H200-class device); ``--tiny`` runs every part at test sizes on the
CPU in about a minute (the test suite does, so the script cannot rot). Results land in --output; the figures go to
BENCHMARKS.md by hand, with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from lafs.cli import entry_point

# Full size on a GPU, test size on a CPU: (encoders, benchmark batch, repeats, warm-up, DINO prototypes, run steps).
FULL = {"vit": "lafs_vit_base_p8_112", "iresnet": "iresnet100", "batch": 128, "repeats": 10, "warmup": 3,
        "out_dim": 65536, "steps": 50, "run_batch": 64, "run_encoder": "lafs_vit_base_p8_112"}  # fmt: skip
TINY = {"vit": "lafs_vit_nano_p8_112", "iresnet": "iresnet18", "batch": 2, "repeats": 1, "warmup": 0,
        "out_dim": 64, "steps": 2, "run_batch": 4, "run_encoder": "lafs_vit_nano_p8_112"}  # fmt: skip


def benchmarks(size: dict[str, Any], device: str, compile_modes: Sequence[bool]) -> list[dict[str, Any]]:
    """`bench_gpu` of the ViT (fine-tuning and pretraining steps) and the IResNet (fine-tuning), eager / compiled."""
    from tools.benchmarks.gpu import bench_gpu

    results = []
    for encoder in (size["vit"], size["iresnet"]):
        for compiled in compile_modes:
            start = time.perf_counter()
            record = bench_gpu(encoder, size["batch"], size["repeats"], size["warmup"], device, compiled,
                               precision="auto", out_dim=size["out_dim"])  # fmt: skip
            results.append({**record, "wall_seconds": time.perf_counter() - start})
    return results


def training_runs(size: dict[str, Any], device: str, output: Path) -> dict[str, Any]:
    """A pretraining and a fine-tuning run of ``size["steps"]`` steps on synthetic faces, views on the device."""
    import finetune.task  # noqa: F401 - registers the finetune stage
    import lafs.tasks.pretrain  # noqa: F401 - registers the pretrain stage
    from lafs.engine import STAGES
    from lafs.engine.run_log import read_log

    precision = "bf16" if device != "cpu" else "no"
    common = [f"max_steps={size['steps']}", f"optim.batch_size={size['run_batch']}", f"mixed_precision={precision!r}",
              f"encoder.name={size['run_encoder']}", "resume=''", "replace=true", "num_workers=2",
              "log_every=1"]  # fmt: skip
    stages = {  # stage name -> (config file, its own overrides)
        "pretrain": ("configs/pretrain/demo.yaml", ["views.make_on=accelerator", f"dino.out_dim={size['out_dim']}"]),
        "finetune": ("configs/finetune/demo.yaml", ["init=''", "data.shots=null"]),
    }
    results = {}
    for name, (config, extra) in stages.items():
        run_dir = output.parent / f"{output.stem}_{name}"
        start = time.perf_counter()
        STAGES.get(name).run(config, [*common, *extra, f"output_dir={run_dir}"])
        seconds = time.perf_counter() - start
        log = [record for record in read_log(run_dir) if "loss" in record]
        results[name] = {
            "steps": len(log),
            "first_loss": log[0]["loss"],
            "last_loss": log[-1]["loss"],
            "seconds": seconds,
            "images_per_second": [record.get("images_per_second") for record in log][-1],
            "run_dir": str(run_dir),
        }
    return results


def views_equality(device: str) -> dict[str, Any]:
    """Views of synthetic faces rendered on ``device`` and on the CPU from the same draws: the largest differences."""
    import torch

    from lafs.data.synthetic import synthetic_batch
    from lafs.landmarks import get_landmark_set
    from lafs.views import ViewConfig, draw_views, render_views
    from tools.benchmarks.common import resolve_device

    target = resolve_device(device)
    images, landmarks = synthetic_batch("mediapipe196", 8)
    pixels = ((images + 1) * 127.5).round().to(torch.uint8)
    valid = torch.ones(landmarks.shape[:2], dtype=torch.bool)
    cfg, landmark_set = ViewConfig(), get_landmark_set("mediapipe196")
    height, width = pixels.shape[-2:]
    draws = draw_views(cfg, landmark_set.num_landmarks, (height, width), len(pixels), torch.Generator())
    moved = type(draws)(**{f.name: getattr(draws, f.name).to(target) for f in fields(draws)})
    cpu = render_views(pixels, landmarks, valid, draws, cfg, landmark_set)
    other = render_views(pixels.to(target), landmarks.to(target), valid.to(target), moved, cfg, landmark_set)
    differences = {key: float((cpu[key].float() - other[key].float().cpu()).abs().max()) for key in cpu}
    grey_levels = max(differences[key] for key in ("global_images", "local_images")) * 255
    exact = all(differences[key] == 0 for key in cpu if "landmarks" in key or "valid" in key or "ids" in key)
    return {"device": str(target), "max_abs_difference": differences, "pixels_grey_levels": grey_levels,
            "landmarks_exact": exact, "passed": exact and grey_levels <= 0.5}  # fmt: skip


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path("runs/gpu_check.json"), help="the JSON to write")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="(default: auto)")
    parser.add_argument("--tiny", action="store_true", help="test sizes, eager only (a CPU run of every part)")
    args = parser.parse_args(argv)

    import torch

    from lafs.files import prepare_output_files, write_atomic

    prepare_output_files([args.output], overwrite=True)  # a folder is refused; the JSON is ours to replace
    size = TINY if args.tiny else FULL
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "sizes": size,
    }
    report["benchmarks"] = benchmarks(size, args.device, (False,) if args.tiny else (False, True))
    report["training"] = training_runs(size, args.device, args.output)
    report["views_equality"] = views_equality(args.device)
    report["seconds"] = time.perf_counter() - started
    write_atomic(args.output, json.dumps(report, indent=2, default=str) + "\n")
    for record in report["benchmarks"]:
        for figure in record["figures"]:
            compiled = "compiled" if record["compile"] else "eager"
            print(f"{record['encoder']:<24} {compiled:<8} {figure['name']:<14} {figure['ratio']:.3f}")
    for name, run in report["training"].items():
        print(f"{name}: {run['steps']} steps, loss {run['first_loss']:.3f} -> {run['last_loss']:.3f}, "
              f"{run['seconds']:.0f} s")  # fmt: skip
    equal = report["views_equality"]
    print(f"views on {equal['device']} vs CPU: landmarks exact {equal['landmarks_exact']}, "
          f"pixels within {equal['pixels_grey_levels']:.3f} grey levels")  # fmt: skip
    print(f"wrote {args.output} ({report['seconds']:.0f} s)")
    return 0 if equal["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
