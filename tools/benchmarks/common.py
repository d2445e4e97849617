"""Shared pieces of the benchmarks: devices, interleaved timing, figures, the result dict and synthetic inputs."""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lafs.data.images import encode_jpeg
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.errors import ConfigError

DEFAULT_ENCODER = "lafs_vit_nano_p8_112"
IMAGE_SIZE = 112
FACES_PER_IDENTITY = 10  # images per synthetic identity of write_jpeg_faces, as SyntheticFacesConfig's default
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


def write_jpeg_faces(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` synthetic 112 x 112 faces as root/<identity>/<n>.jpg (quality 95, RGB), the layout of a face folder."""
    identities = math.ceil(count / FACES_PER_IDENTITY)
    faces = SyntheticFaces(
        SyntheticFacesConfig(num_identities=identities, images_per_identity=FACES_PER_IDENTITY, seed=seed)
    )
    for index in range(count):
        label, number = divmod(index, FACES_PER_IDENTITY)
        folder = root / f"person_{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{number:02d}.jpg").write_bytes(encode_jpeg(faces[index]["image"]))
    return root
