"""Shared pieces of the benchmarks: devices, interleaved timing, figures and the result dict."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

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


def synchronise(device: torch.device) -> None:
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
    synchronise(device)
    times: dict[str, list[float]] = {"candidate": [], "reference": []}
    for _ in range(repeats):
        for key, fn in (("candidate", candidate), ("reference", reference)):
            synchronise(device)
            start = time.perf_counter()
            fn()
            synchronise(device)
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


def encoder_on(name: str, device: torch.device) -> Any:
    from lafs.models import EncoderConfig, build_encoder

    return build_encoder(EncoderConfig(name=name)).to(device)


def random_images(batch: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1).to(device)


def result(
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
