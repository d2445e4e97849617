"""GPU figures: model FLOPs utilisation (MFU) of a LAFS fine-tuning step and a LAFS pretraining step.

MFU = model FLOPs of one step / step seconds / peak FLOP/s. The FLOPs are counted once, in eager mode, with
`torch.utils.flop_counter.FlopCounterMode` over the whole step (forward, backward and, for pretraining, the teacher's
forward; the optimiser adds no matmul FLOPs). Only matmuls, convolutions and attention are counted, as usual for MFU;
the tokenizer's grid_sample and the element-wise work are not. The peak is measured here with a large square
``torch.matmul`` (bf16 on CUDA, float32 on CPU) unless ``--peak-tflops`` gives the datasheet number instead; a
measured peak is below the datasheet's (an H100 SXM reaches roughly 600-800 of its 989 dense bf16 TFLOP/s), so
MFU against it reads higher.
"""

from __future__ import annotations

import gc
import statistics
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lafs.models import EncoderConfig
from tools.benchmarks.common import figure, resolve_device, result, synchronise
from tools.benchmarks.training_step import Precision, TrainingStep, build_finetune_step, build_pretrain_step

GPU_ENCODER = "lafs_vit_base_p8_112"  # LAFS's paper scale
CUDA_MATMUL_SIZE = 8192  # large enough to reach the tensor cores' plateau
CPU_MATMUL_SIZE = 1024  # keeps CPU runs (tests) quick


def matmul_peak(device: torch.device, size: int, repeats: int = 10) -> tuple[float, str]:
    """Best FLOP/s of a (size x size) @ (size x size) matmul (2 size^3 FLOPs), bf16 on CUDA, float32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(3):  # clocks up, cuBLAS picks its kernel
        torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(max(repeats, 3)):
        synchronise(device)
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best, str(dtype).removeprefix("torch.")


def count_flops(step: TrainingStep, device: torch.device) -> int:
    """Matmul/conv/attention FLOPs of one run of ``step`` (eager mode; runs the step once, optimiser included)."""
    # FlopCounterMode has no rule for CPU's fused attention kernel; the math backend decomposes it into counted bmms.
    backend: AbstractContextManager[Any] = nullcontext()
    if device.type == "cpu":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = sdpa_kernel(SDPBackend.MATH)
    with backend, FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def median_seconds(step: TrainingStep, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall seconds of ``step()``, synchronised around each run on CUDA."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        step()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_step(
    step: TrainingStep, batch: int, repeats: int, warmup: int, device: torch.device, compile: bool
) -> dict[str, Any]:
    """FLOPs per step, median seconds, images/s and peak memory (GiB on CUDA, None on CPU) of one step."""
    flops = count_flops(step, device)  # eager, before compiling; also the first warm-up run
    if compile:
        step.compile()
        warmup = max(warmup, 2)  # the first compiled calls trace and autotune; never time them
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(step, repeats, warmup, device)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "flops_per_step": flops,
        "seconds_per_step": seconds,
        "images_per_second": batch / seconds,
        "peak_memory_gib": memory,
        **step.info,
    }


def bench_gpu(
    encoder: str = GPU_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    compile: bool = False,
    precision: Precision = "auto",
    matmul_size: int | None = None,
    peak_tflops: float | None = None,
    num_local: int = 8,
    local_landmarks: int = 36,
    out_dim: int = 65536,
    classes: int = 1000,
) -> dict[str, Any]:
    """MFU of a LAFS fine-tuning step (K tokens) and pretraining step (2 x K + num_local x k tokens)."""
    dev = resolve_device(device)
    size = matmul_size or (CUDA_MATMUL_SIZE if dev.type == "cuda" else CPU_MATMUL_SIZE)
    measured, matmul_dtype = matmul_peak(dev, size)
    peak = peak_tflops * 1e12 if peak_tflops is not None else measured

    steps: dict[str, dict[str, Any]] = {}
    finetune = build_finetune_step(encoder, batch, dev, plain=False, classes=classes, precision=precision)
    steps["finetune"] = measure_step(finetune, batch, repeats, warmup, dev, compile)
    del finetune
    _release(dev)  # the pretraining step's peak memory must not include the fine-tuning model
    targets = {"finetune": 0.40}
    if EncoderConfig(name=encoder).takes_landmarks:  # LAFS pretrains landmark-token encoders only
        targets["pretrain"] = 0.35
        steps["pretrain"] = _pretrain_step(encoder, batch, dev, num_local, local_landmarks, out_dim, precision,
                                           repeats, warmup, compile)  # fmt: skip
    figures = []
    for name, target in targets.items():
        achieved = steps[name]["flops_per_step"] / steps[name]["seconds_per_step"]
        figures.append(figure(f"{name}_mfu", achieved / 1e12, peak / 1e12, "TFLOP/s", target, higher_is_better=True))
    extras = {
        "compile": compile,
        "matmul_size": size,
        "matmul_dtype": matmul_dtype,
        "measured_peak_tflops": measured / 1e12,
        "peak_source": "--peak-tflops" if peak_tflops is not None else f"measured {size}^2 {matmul_dtype} matmul",
        **steps,
    }
    return result("gpu", encoder, batch, repeats, warmup, dev, figures, **extras)


def _pretrain_step(
    encoder: str,
    batch: int,
    dev: torch.device,
    num_local: int,
    local_landmarks: int,
    out_dim: int,
    precision: Precision,
    repeats: int,
    warmup: int,
    compile: bool,
) -> dict[str, Any]:
    """`measure_step` of a LAFS pretraining step, its model released afterwards."""
    pretrain = build_pretrain_step(
        encoder,
        batch,
        dev,
        plain=False,
        num_local=num_local,
        local_landmarks=local_landmarks,
        out_dim=out_dim,
        precision=precision,
    )
    measured = measure_step(pretrain, batch, repeats, warmup, dev, compile)
    del pretrain
    _release(dev)
    return measured
