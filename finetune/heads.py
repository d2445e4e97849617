"""Margin heads: normalised class centres, cosine logits, a margin on the target logit, scaled by s.

One module covers the whole family through the combined margin ``psi(theta) = cos(m1 * theta + m2) - m3``
(SphereFace m1, ArcFace m2, CosFace m3; Deng et al., ArcFace, arXiv 1801.07698). Named settings are a registry
of default margins. Unlike current arcface_torch (which applies the ArcFace margin in place under ``no_grad``, a
straight-through gradient), the margin here is analytic with the true gradient; ``straight_through=True``
reproduces arcface_torch's gradient. Past ``m1 * theta + m2 = pi`` the margin stops being monotone, so a guard
applies: ``easy`` (no margin for cos <= 0) or ``threshold`` (insightface's CosFace-style fallback
``cos - m2 * sin(m2) - m3``; not continuous at the switch, but monotone). See docs/losses.md section 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lafs.errors import ConfigError
from lafs.registry import HEADS

Guard = Literal["none", "easy", "threshold"]

# (m1, m2, m3) each named head starts from; `head.margins` overrides.
HEADS.register("arcface")((1.0, 0.5, 0.0))  # arcface_torch configs/base.py
HEADS.register("cosface")((1.0, 0.0, 0.4))  # LAFS's head and arcface_torch's CosFace default (the paper: 0.35)
HEADS.register("combined")((1.0, 0.3, 0.2))  # the ArcFace paper's CM1


@dataclass
class PartialFCConfig:
    """Partial FC (`finetune.partial_fc`): the class centres sharded across processes, a sampled softmax per step."""

    enabled: bool = False  # off: every process holds every centre (DDP keeps them equal), as the papers train
    sample_rate: float = 1.0  # share of each process's classes in a step's softmax (positives always); 1 = all

    def validate(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"head.partial_fc.sample_rate must lie in (0, 1], got {self.sample_rate}")


@dataclass
class HeadConfig:
    name: str = "cosface"  # arcface | cosface | combined; LAFS fine-tunes with CosFace
    scale: float = 64.0  # s, as in every paper this project follows
    margins: list[float] | None = None  # (m1, m2, m3); None takes the named head's defaults
    guard: Guard = "threshold"  # insightface's default guard for theta + m2 > pi
    straight_through: bool = False  # True: arcface_torch's gradient (margin applied without autograd)
    interclass_filter: float = 0.0  # > 0: non-target cosines above it become 0 (arcface_torch's filter); 0 = off
    # Millions of identities: centres sharded across processes (arcface_torch's Partial FC); off by default.
    partial_fc: PartialFCConfig = field(default_factory=PartialFCConfig)

    def validate(self) -> None:
        margins = self.resolved_margins()
        if len(margins) != 3:
            raise ConfigError(f"head.margins must be [m1, m2, m3], got {self.margins}")
        if margins[0] <= 0 or self.scale <= 0:
            raise ConfigError("head.margins m1 and head.scale must be > 0")
        if not 0 <= self.interclass_filter <= 1:
            raise ConfigError(f"head.interclass_filter must lie in [0, 1], got {self.interclass_filter}")

    def resolved_margins(self) -> tuple[float, ...]:
        return tuple(self.margins) if self.margins is not None else HEADS.get(self.name)

    def margin_options(self) -> dict[str, Any]:
        """The keyword arguments of `Margin` this config sets (both head kinds take them)."""
        m1, m2, m3 = self.resolved_margins()  # three, as validate checks
        return {
            "scale": self.scale,
            "margins": (m1, m2, m3),
            "guard": self.guard,
            "straight_through": self.straight_through,
            "interclass_filter": self.interclass_filter,
        }


def cosine_matrix(embeddings: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """cos(theta) (..., B, C) of embeddings (..., B, d) to centres (C, d), clamped to [-1, 1]."""
    cos = F.normalize(embeddings, dim=-1) @ F.normalize(centres, dim=-1).t()
    return cos.clamp(-1.0, 1.0)  # fp16 round-off can leave |cos| slightly above 1


class Margin(nn.Module):
    """The margin maths, without centres: ``margin`` (psi of target cosines) and ``logits`` (scaled, margined).

    `MarginHead` adds every class centre; `finetune.partial_fc.PartialFC` a process's shard of them.
    """

    def __init__(
        self,
        scale: float = 64.0,
        margins: tuple[float, float, float] = (1.0, 0.5, 0.0),
        guard: Guard = "threshold",
        straight_through: bool = False,
        interclass_filter: float = 0.0,
    ) -> None:
        super().__init__()
        self.scale = float(scale)
        self.m1, self.m2, self.m3 = (float(m) for m in margins)
        self.guard, self.straight_through, self.interclass_filter = guard, straight_through, interclass_filter

    def margin(self, cos: torch.Tensor, m2: float | torch.Tensor | None = None) -> torch.Tensor:
        """psi(theta) for target cosines ``cos`` (any shape); ``m2`` (broadcastable) overrides the head's."""
        m1, m3 = self.m1, self.m3
        m2 = self.m2 if m2 is None else m2
        if m1 == 1.0 and not torch.is_tensor(m2) and m2 == 0.0:
            psi = cos - m3  # CosFace: monotone, no guard needed
        else:
            psi = self._angular(cos, m1, m2) - m3
            psi = self._guarded(cos, psi, m1, m2)
        if self.straight_through:
            psi = cos + (psi - cos).detach()
        return psi

    @staticmethod
    def _angular(cos: torch.Tensor, m1: float, m2: float | torch.Tensor) -> torch.Tensor:
        m2 = torch.as_tensor(m2, dtype=cos.dtype, device=cos.device)
        if m1 == 1.0:
            # cos(theta + m2) without arccos; the floor on sin^2 keeps the gradient finite at cos = +-1.
            sin = torch.sqrt((1.0 - cos * cos).clamp(min=1e-12))
            return cos * torch.cos(m2) - sin * torch.sin(m2)
        theta = torch.acos(cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        return torch.cos(m1 * theta + m2)

    def _guarded(self, cos: torch.Tensor, psi: torch.Tensor, m1: float, m2: float | torch.Tensor) -> torch.Tensor:
        if self.guard == "none":
            return psi
        if self.guard == "easy":
            return torch.where(cos > 0, psi, cos - self.m3)
        m2 = torch.as_tensor(m2, dtype=cos.dtype, device=cos.device)
        threshold = torch.cos((math.pi - m2) / m1)  # m1 * theta + m2 = pi
        fallback = cos - m2 * torch.sin(math.pi - m2) - self.m3
        return torch.where(cos > threshold, psi, fallback)

    def logits(
        self,
        cosines: torch.Tensor,
        labels: torch.Tensor,
        soft_labels: torch.Tensor | None = None,
        class_margins: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled logits (..., B, C) from cosines (..., B, C).

        ``labels`` (B,) int64; -1 leaves a row's margin alone (Partial-FC's "no positive here"). ``soft_labels``
        (B, C) spreads the margin in proportion to the label mass (LAFS's mixup CosFace:
        ``cos - m3 * y_soft``). ``class_margins`` (C,) replaces m2 per class (cluster-guided margins).
        """
        cos = cosines
        labels = labels.expand(cos.shape[:-1])
        if self.interclass_filter > 0:
            with torch.no_grad():
                dirty = cos > self.interclass_filter
                # A row's own class is never filtered; a row without one here (-1) has every column filtered.
                target = torch.zeros_like(dirty).scatter_(-1, labels.clamp(min=0)[..., None], (labels >= 0)[..., None])
                dirty &= ~target
            cos = cos.masked_fill(dirty, 0.0)
        if soft_labels is not None:
            psi = self.margin(cos, None if class_margins is None else class_margins)
            return self.scale * (cos + soft_labels * (psi - cos))
        index = labels.clamp(min=0)[..., None]
        target = cos.gather(-1, index).squeeze(-1)
        psi = self.margin(target, None if class_margins is None else class_margins[index.squeeze(-1)])
        psi = torch.where(labels >= 0, psi, target)
        return self.scale * cos.scatter(-1, index, psi[..., None])

    def extra_repr(self) -> str:
        margins = f"m1={self.m1}, m2={self.m2}, m3={self.m3}"
        return f"s={self.scale}, {margins}, guard={self.guard}"


class MarginHead(Margin):
    """Class centres ``weight`` (C, d). Call: embeddings (..., B, d) and labels (B,) -> scaled logits (..., B, C)."""

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        scale: float = 64.0,
        margins: tuple[float, float, float] = (1.0, 0.5, 0.0),
        guard: Guard = "threshold",
        straight_through: bool = False,
        interclass_filter: float = 0.0,
    ) -> None:
        super().__init__(scale, margins, guard, straight_through, interclass_filter)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim).normal_(0.0, 0.01))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(theta) (..., B, C) of embeddings (..., B, d) to every class centre, clamped to [-1, 1]."""
        return cosine_matrix(embeddings, self.weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled, margined logits (..., B, C) for embeddings (..., B, d)."""
        return self.logits(self.cosines(embeddings), labels)

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, dim={self.weight.shape[1]}, {super().extra_repr()}"


def build_head(cfg: HeadConfig, num_classes: int, embed_dim: int) -> MarginHead:
    """The configured replicated head for ``num_classes`` identities (from the dataset) and ``embed_dim`` features.

    (With ``cfg.partial_fc.enabled``, `finetune.partial_fc.build_partial_fc` builds this process's shard instead.)
    """
    return MarginHead(num_classes, embed_dim, **cfg.margin_options())


def margin_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy of logits (..., B, C): hard labels (B,), or soft targets (B, C) when given."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision up, float64 kept
    if soft_labels is not None:
        return -(soft_labels * logits.log_softmax(-1)).sum(-1).mean()
    flat = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, labels.expand(logits.shape[:-1]).reshape(-1), ignore_index=-1)
