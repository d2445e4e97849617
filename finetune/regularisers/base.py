"""The interface every regulariser implements; see `finetune.objective` for how they are combined."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from finetune.context import LossContext
from lafs.schedules import WeightSchedule


@dataclass
class RegulariserConfig:
    """Fields every regulariser config has (each method's config subclasses this)."""

    enabled: bool = False  # off unless an experiment file switches it on
    weight: WeightSchedule = field(default_factory=WeightSchedule)  # lambda(t), multiplies every term it returns


class Regulariser(nn.Module):
    """An additive term ``lambda(t) * sum(terms)`` of the fine-tuning loss.

    ``forward`` returns unweighted named terms ending in ``_loss``. It is not called at all while lambda(t) = 0,
    so the loss is then bit-identical to the base. ``requires`` names `LossContext` fields that must not be None.
    Persistent state (running margins, memory banks, cluster tables) lives in registered buffers, so checkpoints
    capture it. Three optional hooks change the base loss itself and run whatever lambda(t) is:
    ``embedding_views``, ``class_margins`` and ``update``.
    """

    requires: frozenset[str] = frozenset()

    def forward(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def embedding_views(self, features: torch.Tensor, epoch: float) -> torch.Tensor | None:
        """(V, B, d) views of features (B, d) for the margin loss, or None to leave them alone."""
        return None

    def class_margins(self) -> torch.Tensor | None:
        """(C,) per-class additive angular margins that replace the head's m2, or None."""
        return None

    @torch.no_grad()
    def update(self, ctx: LossContext) -> None:
        """State updates after the step's loss (memory banks, re-clustering); ``ctx`` tensors are detached."""
