"""The interface every regulariser implements; see `finetune.objective` for how they are combined."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import torch
from torch import nn

from finetune.context import LossContext
from lafs.engine import OptimConfig
from lafs.schedules import LAFS_FINETUNE_EPOCHS, WeightSchedule

_Config = TypeVar("_Config", bound="RegulariserConfig")


@dataclass
class RegulariserConfig:
    """Fields every regulariser config has (each method's config subclasses this)."""

    # Epochs of the recipe the method's epoch-valued defaults come from; optim.schedules=relative stretches them
    # from it to the run's optim.epochs. (A constant, not a key: it describes the defaults.)
    recipe_epochs: ClassVar[float] = LAFS_FINETUNE_EPOCHS

    enabled: bool = False  # off unless an experiment file switches it on
    weight: WeightSchedule = field(default_factory=WeightSchedule)  # lambda(t), multiplies every term it returns

    def validate(self) -> None:
        self.weight.validate()

    def in_run(self: _Config, optim: OptimConfig) -> _Config:
        """This config with its weight schedule in the run's epochs (fractions of the run and, under
        ``optim.schedules=relative``, epochs of ``recipe_epochs`` stretched to ``optim.epochs``)."""
        return dataclasses.replace(self, weight=self.weight.in_run(optim.epochs, optim.stretch(self.recipe_epochs)))


@dataclass
class ViewSource:
    """Where embedding-level views come from when the encoder has an embedding layer (IResNet, timm: encoders).

    ``inputs`` (B, F) is what enters that layer (IResNet: the flattened 7 x 7 map) and ``embed`` the layer itself,
    (B, F) -> (B, d). Without one (the landmark ViT, whose pooled token is the embedding) views act on the features.
    """

    inputs: torch.Tensor
    embed: Callable[[torch.Tensor], torch.Tensor]


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

    def embedding_views(
        self, features: torch.Tensor, epoch: float, source: ViewSource | None = None
    ) -> torch.Tensor | None:
        """(V, B, d) views of features (B, d) for the margin loss, or None to leave them alone.

        ``source``, when the encoder has an embedding layer, lets a view act before that layer.
        """
        return None

    def class_margins(self) -> torch.Tensor | None:
        """(C,) per-class additive angular margins that replace the head's m2, or None."""
        return None

    @torch.no_grad()
    def update(self, ctx: LossContext) -> None:
        """State updates after the step's loss (memory banks, re-clustering); ``ctx`` tensors are detached."""
