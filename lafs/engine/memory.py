"""A start-up estimate of a training process's memory, checked against what the device has free.

A config sized for GPUs (ViT-B, 82 images of 10 views, 65,536 prototypes) started on a laptop would otherwise be
killed by the kernel minutes later with nothing said. The estimate counts, per process: the trained modules'
parameters, their gradients and AdamW's two moments (or SGD's momentum), the modules that live beside them (an EMA
teacher), and the activations autograd keeps for one optimiser micro-batch, which each task counts for its own
forward (`Task.activation_bytes`). It is an estimate (allocator overheads, loader workers and temporaries are not
in it): runs stop only when it exceeds the free memory, and ``memory_check=false`` skips the check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lafs.data.memory import available_memory
from lafs.errors import ConfigError

GiB = 2**30


def block_activation_elements(tokens: int, width: int, heads: int, mlp_ratio: float = 4.0) -> int:
    """Values one pre-norm transformer block keeps for backward on ``tokens`` tokens of ``width`` (per sample).

    The standard count (Korthikanti et al., 2022, without recomputation): the two LayerNorms' inputs (2 T D), the
    QKV projection's input and its Q, K and V (4 T D), the attention output the projection reads (T D), the MLP's
    input (T D) and its hidden activation before and after GELU (2 r T D): ``T D (8 + 2 r)``, plus the attention
    probabilities (``H T^2``; fused kernels that recompute them keep less, so this errs high).
    """
    return int(tokens * width * (8 + 2 * mlp_ratio) + heads * tokens * tokens)


def vit_activation_elements(model: nn.Module, tokens_per_view: Sequence[int]) -> int:
    """Values a timm-style ViT's blocks (``model.blocks``, each with ``attn.num_heads`` and ``mlp.fc1``) keep for
    backward over the views of one sample, each view attending within itself."""
    blocks = list(model.blocks)  # type: ignore[arg-type]
    width = int(model.embed_dim)  # type: ignore[arg-type]
    heads, ratio = int(blocks[0].attn.num_heads), blocks[0].mlp.fc1.out_features / width
    return len(blocks) * sum(block_activation_elements(t, width, heads, ratio) for t in tokens_per_view)


def value_bytes(mixed_precision: str) -> int:
    """Bytes per kept activation: 2 under bf16/fp16 autocast (most are matmul inputs it casts), else 4."""
    return 2 if mixed_precision in ("bf16", "fp16") else 4


def parameter_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of every parameter and buffer of ``modules`` (each tensor counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(gradient bytes, optimiser-state bytes) of the parameters ``optimizer`` trains: AdamW keeps two moments per
    value, SGD with momentum one, plain SGD none."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    trained = sum(p.numel() * p.element_size() for p in params)
    moments = 2 if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) else 0
    if isinstance(optimizer, torch.optim.SGD) and any(group.get("momentum", 0) for group in optimizer.param_groups):
        moments = 1
    return trained, moments * trained


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process by part: ``{"parameters": ..., "gradients": ..., "optimiser": ..., "activations": ...}``."""

    parts: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """``"31.2 GiB (parameters 0.4, gradients 0.3, ...)"``."""
        inside = ", ".join(f"{name} {value / GiB:.1f}" for name, value in self.parts.items())
        return f"{self.total / GiB:.1f} GiB ({inside})"


def estimate_memory(
    trained: nn.Module, optimizer: torch.optim.Optimizer, beside: Sequence[nn.Module], activations: int | None
) -> MemoryEstimate:
    """The estimate for ``trained`` (with its gradients and ``optimizer``'s state), the modules that live ``beside``
    it (an EMA teacher) and ``activations`` bytes of one micro-batch (None: not estimated, left out)."""
    gradients, optimiser = optimizer_state_bytes(optimizer)
    parts = {
        "parameters": parameter_bytes([trained, *beside]),
        "gradients": gradients,
        "optimiser": optimiser,
    }
    if activations is not None:
        parts["activations"] = activations
    return MemoryEstimate(parts)


def device_free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory (CUDA), else the machine's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory()


def check_memory(estimate: MemoryEstimate, processes: int, free: int | None = None, advice: str = "") -> None:
    """`ConfigError` (one line) when ``processes`` processes of ``estimate`` each would not fit in ``free`` bytes
    (default: the machine's available memory), naming the estimate, what is free and ``advice``."""
    free = available_memory() if free is None else free
    if estimate.total * processes <= free:
        return
    each = "" if processes == 1 else f" for each of {processes} processes"
    raise ConfigError(
        f"this config needs about {estimate.describe()}{each}; {free / GiB:.1f} GiB is available. "
        f"{advice}{' ' if advice else ''}(memory_check=false starts anyway)"
    )
