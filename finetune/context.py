"""What one fine-tuning step hands to every regulariser: `LossContext`, and `Communicator` for cross-process state."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.nn

if TYPE_CHECKING:
    from finetune.heads import MarginHead
    from finetune.partial_fc import PartialFC


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass
class Communicator:
    """Collective operations a regulariser may need; the defaults are those of a single process."""

    is_main: bool = True  # the process that runs once-per-run jobs (clustering)
    rank: int = 0  # this process's index: its chunk of a gathered tensor starts at rank * local batch
    gather: Callable[[torch.Tensor], torch.Tensor] = _same  # concatenates every process's tensor along dim 0
    # The same, differentiable: each process's chunk gets the gradient of every process's loss back (summed), so
    # after DDP averages, a loss over gathered rows has the gradient of one loss over the whole batch.
    gather_with_grad: Callable[[torch.Tensor], torch.Tensor] = _same
    broadcast: Callable[[torch.Tensor], torch.Tensor] = _same  # returns the main process's tensor on every process


@dataclass
class LossContext:
    """The tensors of one step. ``V`` embedding views (1 unless a regulariser asks for more), batch ``B``,
    embedding width ``d``, ``C`` classes, ``K`` landmarks.

    With Partial FC (`finetune.partial_fc`) ``cosines`` and ``logits`` are this process's pieces, (V, N, S): the
    whole gathered batch (N rows) against the S classes it sampled; ``head`` holds its shard of the centres, and
    ``lse`` each row's log-sum-exp over every class (use `log_partition`, which works with both heads).
    """

    features: torch.Tensor  # (B, d) encoder embeddings, before any embedding-level dropout
    embeddings: torch.Tensor  # (V, B, d) the views the margin cross-entropy was computed on
    labels: torch.Tensor  # (B,) int64 hard labels (the dominant label of a mixed image)
    cosines: torch.Tensor  # (V, B, C) cos(theta) of each view to every class centre, clamped, before any margin
    logits: torch.Tensor  # (V, B, C) the margin head's scaled logits (margins applied), as the cross-entropy saw them
    head: MarginHead | PartialFC  # the class centres (head.weight, C x d, or a shard) and the scale (head.scale)
    epoch: float = 0.0  # fractional epoch: step / steps_per_epoch
    step: int = 0  # optimiser steps taken before this one
    soft_labels: torch.Tensor | None = None  # (B, C) mixup targets, None when the batch was not mixed
    indices: torch.Tensor | None = None  # (B,) int64 dataset indices (memory banks key on them)
    landmarks: torch.Tensor | None = None  # (B, K, 2) pixels the encoder sampled at (a trainable predictor's output)
    reference_landmarks: torch.Tensor | None = None  # (B, K, 2) the frozen reference (cache or frozen predictor)
    image_size: int = 112  # side of the square input, in pixels
    comm: Communicator = field(default_factory=Communicator)
    lse: torch.Tensor | None = None  # (V, B) log-sum-exp of each row's logits over all classes, from a sharded head

    @classmethod
    def from_embeddings(
        cls,
        head: MarginHead,
        features: torch.Tensor,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        soft_labels: torch.Tensor | None = None,
        class_margins: torch.Tensor | None = None,
        **fields: Any,
    ) -> LossContext:
        """A context whose cosines and logits ``head`` computes from embeddings (V, B, d), as the objective does."""
        cosines = head.cosines(embeddings)
        logits = head.logits(cosines, labels, soft_labels, class_margins)
        return cls(features, embeddings, labels, cosines, logits, head, soft_labels=soft_labels, **fields)

    def log_partition(self) -> torch.Tensor:
        """(V, B) log-sum-exp of each row's scaled logits over every class, in float32 or wider."""
        if self.lse is not None:
            return self.lse
        return torch.logsumexp(self.logits.to(torch.promote_types(self.logits.dtype, torch.float32)), dim=-1)

    @property
    def mixed(self) -> bool:
        """Mixup changed this batch (pair and contrastive terms skip such batches)."""
        return self.soft_labels is not None


def differentiable_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` (b, ...) concatenated along dim 0 (processes x b, ...), gradients flowing back.

    The backward sums each chunk's gradient over the processes (torch.distributed.nn's all_gather).
    """
    # (torch 2.14 marks it deprecated for _functional_collectives, whose gradient support is still private API.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(torch.distributed.nn.functional.all_gather(tensor))
