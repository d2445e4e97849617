"""IntraLoss: a gradient-enhancing intra-class term (Jiang et al., arXiv 2107.03352, 2021).

In a margin softmax the pull of a sample towards its class centre decays with 1 - p_y, so well-classified
samples stop moving although the class distribution is still anisotropic. IntraLoss adds a term on the target
angle whose gradient does not vanish: ``intraloss_loss = mean_i(w_i * G(theta_{i,y_i}))``, with
``theta = acos(clamp(cos, -1 + eps, 1 - eps))`` from the raw (pre-margin) target cosines of every view.

Provenance (docs/losses.md section 6). No code for this paper was found and only its abstract was
read. The documented part is the ArcFace paper's "Intra-Loss" (Deng et al., arXiv 1801.07698):
``G = theta / pi``, ``w = 1``, which is this module's default (``shape="linear"``, ``beta=0``). The
gradient-enhancing weighting is a **reconstruction from the abstract** ([INFER]), not the paper's formula:
``G = theta^2 / pi^2`` (``shape="square"``) and the anisotropy weight
``w_i = 1 + beta * max(0, cos_nearest_other_i - batch mean)`` (detached), which weights samples that lean
towards their nearest other class centre more. Verify against the paper before claiming parity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from finetune.context import LossContext
from finetune.regularisers.base import Regulariser, RegulariserConfig
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS
from lafs.schedules import LAFS_FINETUNE_EPOCHS, WeightSchedule

Shape = Literal["linear", "square"]


@dataclass
class IntraLossConfig(RegulariserConfig):
    # The paper's length is unknown (only its abstract was read): a start written in epochs (after the warm-up,
    # spec 6(d); configs/finetune/arcface_intraloss.yaml starts at 5) is read against LAFS fine-tuning's 34.
    recipe_epochs: ClassVar[float] = LAFS_FINETUNE_EPOCHS
    # lambda = 1 with G = theta / pi is the ArcFace paper's Intra-Loss (spec 6(d)); sweep {0.1, 0.5, 1, 2}.
    weight: WeightSchedule = field(default_factory=lambda: WeightSchedule(kind="constant", value=1.0))
    shape: Shape = "linear"  # G = theta / pi: the documented ArcFace-paper form; "square" is our [INFER] variant
    beta: float = 0.0  # anisotropy weight; 0 gives the ArcFace paper's Intra-Loss, spec suggests sweeping {1, 4}
    eps: float = 1e-6  # spec 6(c): keeps d acos / d cos finite at cos = +-1

    def validate(self) -> None:
        self.weight.validate()
        if self.shape not in ("linear", "square"):
            raise ConfigError(f"intraloss.shape must be 'linear' or 'square', got {self.shape!r}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"intraloss.beta must be >= 0, got {self.beta}")
        if not 0 < self.eps < 1:
            raise ConfigError(f"intraloss.eps must lie in (0, 1), got {self.eps}")


def target_angles(cosines: torch.Tensor, labels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """theta (V, B) of cosines (V, B, C) at labels (B,): acos of the target cosine clamped to [-1+eps, 1-eps]."""
    index = labels.clamp(min=0).expand(cosines.shape[:-1])[..., None]
    target = cosines.gather(-1, index).squeeze(-1)
    return torch.acos(target.clamp(-1.0 + eps, 1.0 - eps))


@torch.no_grad()
def anisotropy_weights(cosines: torch.Tensor, labels: torch.Tensor, beta: float, valid: torch.Tensor) -> torch.Tensor:
    """w (V, B) = 1 + beta * max(0, nearest non-target cosine - its mean over the valid rows (B,) of each view).

    Detached: the weight selects samples, it is not itself optimised. With a single class it is 1.
    """
    cos = cosines.detach()
    if beta == 0 or cos.shape[-1] < 2:
        return torch.ones(cos.shape[:-1], dtype=cos.dtype, device=cos.device)
    index = labels.clamp(min=0).expand(cos.shape[:-1])[..., None]
    nearest = cos.scatter(-1, index, -math.inf).max(dim=-1).values
    mean = nearest[:, valid].mean(dim=1, keepdim=True)
    return 1.0 + beta * (nearest - mean).clamp(min=0)


class IntraLoss(Regulariser):
    """``intraloss_loss = mean over views and rows of w * G(theta_y)`` from ctx.cosines and ctx.labels.

    Mixup batches use the dominant label (ctx.labels): the term pulls towards one centre.
    """

    def __init__(self, shape: Shape = "linear", beta: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.shape, self.beta, self.eps = shape, float(beta), float(eps)

    def forward(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        """``{"intraloss_loss": scalar}`` from ctx.cosines (V, B, C) and ctx.labels (B,); rows labelled -1 skip."""
        cosines = ctx.cosines.to(torch.promote_types(ctx.cosines.dtype, torch.float32))
        valid = ctx.labels >= 0
        if not bool(valid.any()):
            return {"intraloss_loss": cosines.new_zeros(())}
        theta = target_angles(cosines, ctx.labels, self.eps)
        g = theta / math.pi if self.shape == "linear" else (theta / math.pi) ** 2
        w = anisotropy_weights(cosines, ctx.labels, self.beta, valid)
        return {"intraloss_loss": (w * g)[:, valid].mean()}

    def extra_repr(self) -> str:
        return f"shape={self.shape}, beta={self.beta}, eps={self.eps}"


@REGULARISERS.register("intraloss")
def build_intraloss(cfg: IntraLossConfig, *, num_classes: int, embed_dim: int, num_samples: int) -> IntraLoss:
    """IntraLoss from its config (stateless)."""
    cfg.validate()
    return IntraLoss(shape=cfg.shape, beta=cfg.beta, eps=cfg.eps)
