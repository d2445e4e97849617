"""Partial FC figures: memory per process and step time of the sharded head against the replicated one.

One process stands in for process 0 of ``--processes``: its communicator repeats the process's own batch as every
process's, so it computes exactly what process 0 of a real run computes (all ``processes x batch`` rows against its
``C / processes`` classes, ``sample_rate`` of them sampled). The collectives themselves are not timed: Partial FC's
move ``processes x batch x (d + 8)`` numbers a step, while the replicated head's gradient all-reduce (not timed
either) moves ``C x d``. Only the head is measured (forward, cross-entropy, backward, AdamW on the centres); the
encoder costs the same on both sides.

Memory is counted, not sampled, so it means the same on a CPU and a GPU: the centres, their gradient and their
AdamW moments (4 x classes held x d floats), plus what autograd keeps for the backward pass (the unique storages of
the saved tensors other than the centres). On CUDA the allocator's measured peak is in the JSON too. The GPU
projection measures the same at the GPU run's shape (``--gpu-dim`` wide embeddings, ``--gpu-batch`` images per GPU
on ``--processes`` GPUs, fp32 centres and AdamW) at two small class counts, and extrapolates linearly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from finetune.context import Communicator
from finetune.heads import MarginHead, margin_cross_entropy
from finetune.partial_fc import PartialFC
from tools.benchmarks.common import figure, resolve_device, result, synchronise, time_side_by_side

ARCFACE = (1.0, 0.5, 0.0)
MIB, GIB = 2**20, 2**30


def short(count: int) -> str:
    """100000 -> 100k, 1000000 -> 1M (figure names)."""
    for size, suffix in ((10**6, "M"), (10**3, "k")):
        if count % size == 0:
            return f"{count // size}{suffix}"
    return str(count)


class HeadStep:
    """One training step of a head alone on fixed random embeddings (B, d) and labels: forward, cross-entropy,
    backward, AdamW. ``processes > 1``: process 0's shard of a Partial FC head; else the replicated head."""

    def __init__(
        self, classes: int, dim: int, batch: int, device: torch.device, processes: int = 1, sample_rate: float = 1.0
    ) -> None:
        generator = torch.Generator().manual_seed(0)
        self.embeddings = torch.randn(1, batch, dim, generator=generator).to(device).requires_grad_(True)
        self.labels = torch.randint(classes, (batch,), generator=generator).to(device)
        self.head: PartialFC | MarginHead
        if processes > 1:
            self.head = PartialFC(classes, dim, processes=processes, sample_rate=sample_rate, margins=ARCFACE)
        else:
            self.head = MarginHead(classes, dim, margins=ARCFACE)
        self.head.to(device)

        def everyone(tensor: torch.Tensor) -> torch.Tensor:  # every process's batch: this one's, repeated
            return tensor.repeat(processes, *[1] * (tensor.dim() - 1))

        self.comm = Communicator(gather=everyone, gather_with_grad=everyone)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=1e-3, weight_decay=0.05)
        self.step = 0

    def loss(self) -> torch.Tensor:
        if isinstance(self.head, PartialFC):
            return self.head(self.embeddings, self.labels, comm=self.comm, step=self.step).cross_entropy()
        return margin_cross_entropy(self.head(self.embeddings, self.labels), self.labels, None)

    def __call__(self, loss: Callable[[], torch.Tensor] | None = None) -> None:
        (loss or self.loss)().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def memory(self) -> dict[str, int]:
        """Bytes held for the head during a step (after one step, so AdamW's state exists)."""
        centres = {p.untyped_storage().data_ptr() for p in self.head.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in centres:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        def counted() -> torch.Tensor:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                return self.loss()

        self()  # AdamW's moments now exist
        self(counted)
        weights = sum(p.numel() * p.element_size() for p in self.head.parameters())
        moments = sum(
            v.numel() * v.element_size() for s in self.optimizer.state.values() for v in s.values() if v.dim() > 0
        )
        held = {"centres": weights, "gradient": weights, "optimiser": moments}
        return held | {"saved_for_backward": sum(saved.values())}

    def cuda_peak(self, device: torch.device) -> int | None:
        """Measured peak bytes of the CUDA allocator during one step, or None on another device."""
        if device.type != "cuda":
            return None
        synchronise(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        self()
        synchronise(device)
        return torch.cuda.max_memory_allocated(device) - before


def projected_memory(
    classes: int, dim: int, batch: int, device: torch.device, processes: int, sample_rate: float
) -> dict[str, float]:
    """Bytes per process of each side at ``classes``, extrapolated from two measured runs of that shape.

    What a step holds grows linearly with the class count (centres, their copies, logits), so two runs at small
    counts (4096 and 8192 classes per process) give it at any count exactly, up to the sampling's rounding.
    """
    small = [4096 * processes, 8192 * processes]
    projected = {}
    for side, (count, rate) in {"partial_fc": (processes, sample_rate), "replicated": (1, 1.0)}.items():
        held = [sum(HeadStep(c, dim, batch, device, count, rate).memory().values()) for c in small]
        projected[side] = held[0] + (held[1] - held[0]) / (small[1] - small[0]) * (classes - small[0])
    return projected


def bench_partial_fc(
    encoder: str,
    batch: int,
    repeats: int,
    warmup: int,
    device: str,
    classes: list[int],
    dim: int,
    processes: int,
    sample_rate: float,
    gpu_dim: int,
    gpu_batch: int,
) -> dict[str, Any]:
    """Figures per class count: ``partial_fc_memory_<C>`` (MiB per process), ``partial_fc_step_<C>`` (ms per step)
    and ``partial_fc_gpu_projection_<C>`` (GiB per GPU), Partial FC (candidate) against the replicated head."""
    where = resolve_device(device)
    figures, sizes = [], {}
    for count in classes:
        sharded = HeadStep(count, dim, batch, where, processes, sample_rate)
        replicated = HeadStep(count, dim, batch, where)
        seconds = time_side_by_side(sharded, replicated, repeats, warmup, where)
        memory = {"partial_fc": sharded.memory(), "replicated": replicated.memory()}
        held = {"partial_fc": sum(memory["partial_fc"].values()), "replicated": sum(memory["replicated"].values())}
        name = short(count)
        figures.append(
            figure(
                f"partial_fc_memory_{name}",
                held["partial_fc"] / MIB,
                held["replicated"] / MIB,
                "MiB",
                None,
                higher_is_better=False,
            )
        )
        figures.append(
            figure(f"partial_fc_step_{name}", seconds[0] * 1e3, seconds[1] * 1e3, "ms", None, higher_is_better=False)
        )
        gpu = projected_memory(count, gpu_dim, gpu_batch, where, processes, sample_rate)
        figures.append(
            figure(
                f"partial_fc_gpu_projection_{name}",
                gpu["partial_fc"] / GIB,
                gpu["replicated"] / GIB,
                "GiB",
                None,
                higher_is_better=False,
            )
        )
        sizes[name] = {
            "memory_bytes": memory,
            "cuda_peak_bytes": {"partial_fc": sharded.cuda_peak(where), "replicated": replicated.cuda_peak(where)},
            "gpu_projection_bytes": gpu,
        }
        del sharded, replicated
    return result(
        "partial-fc",
        encoder,
        batch,
        repeats,
        warmup,
        where,
        figures,
        classes=classes,
        dim=dim,
        processes=processes,
        sample_rate=sample_rate,
        gpu_projection={"dim": gpu_dim, "batch_per_gpu": gpu_batch, "gpus": processes},
        sizes=sizes,
    )
