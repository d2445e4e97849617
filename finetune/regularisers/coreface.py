"""CoReFace: sample-guided contrastive regularisation (Song & Wang, arXiv 2304.11668; Pattern Recognition 2024).

Two embedding views of one image come from two independent dropout masks where the paper puts them: on the
flattened feature map before the FC for an encoder with an embedding layer (IResNet, timm: encoders; each view then
goes through the shared FC + BN), and on the pooled embedding of the landmark ViT, which has no such layer (spec
3(e) [INFER]). Both views go through the margin CE (the objective averages them: w1 = w2 = 0.5), and a cross-view
contrastive term treats view 1 as anchors and view 2 as candidates: ``C = x1 x2^T`` clamped, same-identity
off-diagonal entries neutralised (set to 0, or removed), an adaptive margin ``m_t`` subtracted from the positive
(diagonal) logit, scale s, CE with targets 0..B-1. ``m_t`` is a running value of the detached batch margin
``m_b = mean_i(C_ii - max_{j != i} C~_ij)`` (C~: masked C with the diagonal set to 0).
Source: IsidoreSong/CoreFace ``utils/losses.py`` (ContraFace loss), ``backbones/iresnet.py`` (double dropout),
``train.py`` and ``config/config.py`` (phase switch at epoch index 7, weights); docs/losses.md section 3.

Caveats. The code's running margin ``m_t = 0.99 m_b + 0.01 m_{t-1}`` puts weight 0.99 on the *new* value, so
it is almost the raw batch margin; the paper presumably means an EMA. ``ema_weight_on_new`` keeps 0.99 for
parity; 0.01 gives a true EMA. The "remove" mask (-inf) follows a community port, not the official code.
The reverse direction (``reverse_weight``, the code's wC2 / wC) is 0 in the released config, but the authors'
``train.py`` still calls the loss in that direction every step and multiplies it by 0: the call is not free, since
it updates the running margin a second time, from the reverse batch margin (C transposed: hardest negatives by
column). ``reverse_updates_margin=true`` does the same (the reverse term, if weighted, then uses that second
margin); by default (ours) the margin is updated once per step, from the forward direction, and a weighted reverse
term shares it. As in the authors'
code the batch margin is per process (no all-gather), so processes hold slightly different running margins; a
checkpoint keeps the main process's, so a resumed multi-process run restarts the others from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from finetune.context import LossContext
from finetune.regularisers.base import Regulariser, RegulariserConfig, ViewSource
from lafs.engine import OptimConfig
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS
from lafs.schedules import WeightSchedule

Mask = Literal["zero", "remove"]


@dataclass
class CoReFaceConfig(RegulariserConfig):
    recipe_epochs: ClassVar[float] = 24  # CoReFace's config.py trains 24 epochs (its log shows 26)

    # wC = 0.05 from epoch index 7 (config.py / train.py: the contrastive term starts with the first LR decay). The
    # switch to two dropout views (phase 2) happens where this weight first turns positive.
    weight: WeightSchedule = field(default_factory=lambda: WeightSchedule(kind="start_at", value=0.05, start_epoch=7))
    # Older configs set the phase-2 epoch here as well; it is accepted only equal to the weight's start (in the
    # weight's unit). Unset (null), the switch simply follows the weight.
    phase2_epoch: float | None = None
    dropout: float = 0.4  # phase-1 single-view dropout (config.py)
    dropout_phase2: float = 0.6  # phase-2 dropout of each of the two views (config.py)
    scale: float = 64.0  # s of the contrastive logits (utils/losses.py)
    ema_weight_on_new: float = 0.99  # the code's weight on the new batch margin (parity; 0.01 is a true EMA)
    mask: Mask = "zero"  # the code sets same-ID entries to 0 (logit 0 stays in the denominator); remove = -inf
    reverse_weight: float = 0.0  # wC2 / wC: the released config uses one direction only (wC2 = 0)
    # The authors' train.py calls the reverse direction every step (at weight 0), which updates the running margin a
    # second time from the reverse batch margin: true reproduces that; false (ours) updates it once per step.
    reverse_updates_margin: bool = False
    mixed_batches: Literal["skip", "dominant"] = "skip"  # spec 9.1 rule 5: contrastive terms skip mixup batches

    def validate(self) -> None:
        self.weight.validate()
        for name in ("dropout", "dropout_phase2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"coreface.{name} must lie in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"coreface.scale must be > 0, got {self.scale}")
        if not 0 <= self.ema_weight_on_new <= 1:
            raise ConfigError(f"coreface.ema_weight_on_new must lie in [0, 1], got {self.ema_weight_on_new}")
        if not (math.isfinite(self.reverse_weight) and self.reverse_weight >= 0):
            raise ConfigError(f"coreface.reverse_weight must be >= 0, got {self.reverse_weight}")
        if self.mask not in ("zero", "remove") or self.mixed_batches not in ("skip", "dominant"):
            raise ConfigError("coreface.mask must be zero|remove and coreface.mixed_batches skip|dominant")
        start = self.weight.first_active()
        if self.phase2_epoch is not None and self.phase2_epoch != start:
            raise ConfigError(
                f"coreface.phase2_epoch={self.phase2_epoch:g} disagrees with coreface.weight, which starts at "
                f"{start:g}: the two-view phase follows the weight's start, so drop coreface.phase2_epoch"
            )

    def in_run(self, optim: OptimConfig) -> CoReFaceConfig:
        """As the base, and phase 2 follows the converted weight (a written phase2_epoch equals its start as
        written, which `validate` checks)."""
        return dataclasses.replace(super().in_run(optim), phase2_epoch=None)


def masked_cross_view_cosines(
    anchors: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, mask: Mask = "zero"
) -> torch.Tensor:
    """C (B, B) = normalised anchors (B, d) @ normalised candidates (B, d)^T, clamped to [-1, 1], with the
    same-label off-diagonal entries set to 0 (``zero``) or -inf (``remove``)."""
    cos = (F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).t()).clamp(-1.0, 1.0)
    eye = torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)
    same = (labels[:, None] == labels[None, :]) & ~eye
    return cos.masked_fill(same, 0.0 if mask == "zero" else -math.inf)


@torch.no_grad()
def batch_margin(cosines: torch.Tensor) -> torch.Tensor:
    """m_b (scalar) = mean_i(C_ii - max_{j != i} C~_ij) of the masked C (B, B); the diagonal of C~ is 0, so the
    hardest negative is floored at 0 (and may be a neutralised same-ID entry)."""
    c = cosines.detach()
    eye = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
    hardest = c.masked_fill(eye, 0.0).max(dim=1).values
    return (c.diagonal() - hardest).mean()


def contrastive_loss(cosines: torch.Tensor, margin: torch.Tensor | float, scale: float) -> torch.Tensor:
    """mean_i CE(scale * (C_i - margin * e_i), i) for the masked C (B, B); ``margin`` is a (detached) scalar."""
    eye = torch.eye(cosines.shape[0], dtype=cosines.dtype, device=cosines.device)
    logits = scale * (cosines - margin * eye)
    targets = torch.arange(cosines.shape[0], device=cosines.device)
    return F.cross_entropy(logits, targets)


class CoReFace(Regulariser):
    """Dropout views for the margin CE (``embedding_views``) and the cross-view contrastive ``coreface_loss``.

    The running margin is the registered buffer ``margin`` (checkpointed). It is updated in ``forward`` when
    the module is training and autograd is on: forward runs once per optimiser step (once per micro-batch under
    gradient accumulation), while a ``torch.no_grad`` or eval call (validation) uses the would-be value without
    storing it. It does not move while the weight is 0 (forward is not called), i.e. before phase 2 by default.
    """

    margin: torch.Tensor  # the buffer registered in __init__ (declared: nn.Module.__getattr__ is Tensor | Module)

    def __init__(
        self,
        phase2_epoch: float = 7.0,
        dropout: float = 0.4,
        dropout_phase2: float = 0.6,
        scale: float = 64.0,
        ema_weight_on_new: float = 0.99,
        mask: Mask = "zero",
        reverse_weight: float = 0.0,
        mixed_batches: str = "skip",
        reverse_updates_margin: bool = False,
    ) -> None:
        super().__init__()
        self.phase2_epoch, self.dropout, self.dropout_phase2 = (
            float(phase2_epoch),
            float(dropout),
            float(dropout_phase2),
        )
        self.scale, self.ema_weight_on_new = float(scale), float(ema_weight_on_new)
        self.mask, self.reverse_weight, self.mixed_batches = mask, float(reverse_weight), mixed_batches
        self.reverse_updates_margin = bool(reverse_updates_margin)
        self.register_buffer("margin", torch.zeros(()))  # m_0 = 0 (utils/losses.py)

    def embedding_views(self, features: torch.Tensor, epoch: float, source: ViewSource | None = None) -> torch.Tensor:
        """(1, B, d) with dropout ``dropout`` before ``phase2_epoch``, then (2, B, d): two independent masks.

        With a ``source`` the masks drop its inputs (IResNet's flattened map) and each view goes through its
        ``embed`` (the FC + BN), as the authors' ``double_forward``; otherwise they drop ``features``.
        """
        p, count = (self.dropout, 1) if epoch < self.phase2_epoch else (self.dropout_phase2, 2)
        if source is None:
            return torch.stack([F.dropout(features, p, training=self.training) for _ in range(count)])
        return torch.stack([source.embed(F.dropout(source.inputs, p, training=self.training)) for _ in range(count)])

    def forward(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        """``{"coreface_loss": scalar}`` (plus ``coreface_reverse_loss`` when ``reverse_weight`` > 0) from
        ctx.embeddings (V >= 2, B, d) and ctx.labels (B,)."""
        if ctx.embeddings.shape[0] < 2:
            raise ConfigError(
                f"coreface needs 2 embedding views, got {ctx.embeddings.shape[0]} (weight > 0 before phase2_epoch?)"
            )
        anchors, candidates = ctx.embeddings[0], ctx.embeddings[1]
        dtype = torch.promote_types(anchors.dtype, torch.float32)
        if ctx.mixed and self.mixed_batches == "skip":
            zero = anchors.new_zeros((), dtype=dtype)
            return {"coreface_loss": zero} | ({"coreface_reverse_loss": zero} if self.reverse_weight > 0 else {})
        anchors, candidates = anchors.to(dtype), candidates.to(dtype)
        cos = masked_cross_view_cosines(anchors, candidates, ctx.labels, self.mask)
        w = self.ema_weight_on_new
        margin = w * batch_margin(cos) + (1.0 - w) * self.margin.to(dtype)
        terms = {"coreface_loss": contrastive_loss(cos, margin, self.scale)}
        if self.reverse_weight > 0 or self.reverse_updates_margin:
            reverse = masked_cross_view_cosines(candidates, anchors, ctx.labels, self.mask)
            if self.reverse_updates_margin:  # the authors' second update, from the reverse direction's batch margin
                margin = w * batch_margin(reverse) + (1.0 - w) * margin
            if self.reverse_weight > 0:
                terms["coreface_reverse_loss"] = self.reverse_weight * contrastive_loss(reverse, margin, self.scale)
        if self.training and torch.is_grad_enabled():
            self.margin.copy_(margin)
        return terms

    def extra_repr(self) -> str:
        return (
            f"phase2_epoch={self.phase2_epoch}, dropout={self.dropout}->{self.dropout_phase2}, s={self.scale}, "
            f"ema_weight_on_new={self.ema_weight_on_new}, mask={self.mask}, reverse_weight={self.reverse_weight}, "
            f"reverse_updates_margin={self.reverse_updates_margin}"
        )


@REGULARISERS.register("coreface")
def build_coreface(cfg: CoReFaceConfig, *, num_classes: int, embed_dim: int, num_samples: int) -> CoReFace:
    """CoReFace from its config (its only state is the scalar running margin)."""
    cfg.validate()
    if cfg.weight.unit != "epochs":
        raise ValueError("build_coreface needs its weight in the run's epochs (CoReFaceConfig.in_run)")
    return CoReFace(
        phase2_epoch=cfg.weight.first_active(),
        dropout=cfg.dropout,
        dropout_phase2=cfg.dropout_phase2,
        scale=cfg.scale,
        ema_weight_on_new=cfg.ema_weight_on_new,
        mask=cfg.mask,
        reverse_weight=cfg.reverse_weight,
        mixed_batches=cfg.mixed_batches,
        reverse_updates_margin=cfg.reverse_updates_margin,
    )
