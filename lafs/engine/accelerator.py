"""The one Accelerator every training entry point uses, so the same loop runs on a CPU, one GPU or many."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin


def build_accelerator(
    mixed_precision: str = "no", gradient_accumulation_steps: int = 1, broadcast_buffers: bool = True
) -> Accelerator:
    """An Accelerator with a seedable sampler (resumable data order).

    Launched as several processes on a machine without CUDA, accelerate would fall back to independent
    single-process runs unless told to use the CPU; then it joins the processes with gloo. ``broadcast_buffers=False``
    stops DDP from copying the main process's buffers to the others before every forward (large memory banks that
    every process keeps identical on its own).
    """
    launched_distributed = int(os.environ.get("LOCAL_RANK", -1)) != -1
    return Accelerator(
        cpu=launched_distributed and not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        # Loops feed whole accumulation cycles only; a forced sync on an epoch's last, partial cycle would take an
        # optimiser step on fewer micro-batches than the loss was scaled for.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # non_blocking: copies from pinned host memory overlap with compute instead of waiting for it.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=broadcast_buffers)],
    )


def use_fused_adamw(accelerator: Accelerator) -> bool:
    """Fused (single-kernel) AdamW on CUDA, except under fp16: its scaler then always calls the fused step, which skips
    overflows inside the kernel, so accelerate would report no skipped step and the EMA teacher would move anyway."""
    return accelerator.device.type == "cuda" and accelerator.mixed_precision != "fp16"


@contextlib.contextmanager
def torch_settings(threads: int, deterministic: bool, device: torch.device) -> Iterator[None]:
    """torch's CPU threads and, with ``deterministic``, deterministic kernels for a run; restored afterwards (runs
    in one process, such as the demo's or the tests', must not inherit each other's settings).

    Deterministic kernels make reruns and resumed runs match bit for bit (with one CPU thread). On CUDA some kernels
    have none (grid_sample's backward, which the landmark tokenizer uses, adds with atomics): they warn instead of
    failing, and such runs match to rounding only.
    """
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    before_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic workspace
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before_warn_only)


def processes_on_this_node(accelerator: Accelerator) -> int:
    """Training processes sharing this machine's cores (torchrun's LOCAL_WORLD_SIZE; all of them on one node)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def thread_count(requested: int, processes_on_node: int, loader_workers: int) -> int:
    """torch threads per training process: ``requested``, or with 0 this machine's usable cores shared out.

    Each training process and each of its loader workers is busy at once; torch's default (every core in every
    process) oversubscribes the CPU, which made pretraining 6-10x slower on a busy 2-core machine.
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(processes_on_node, 1) - loader_workers)
