"""UNPG: unified negative pair generation (Jung et al., BMVC 2022, arXiv 2203.11593).

A margin-softmax loss only sees sample-to-class-centre negatives. UNPG appends the in-batch sample-to-sample
negative similarities ``S'^n`` (pairs i < j with y_i != y_j, after a Tukey box-and-whisker filter that drops
outliers) as extra, unmargined logit columns, scaled by the head's s, to every row of the margin softmax.
Source: Jung-Jun-Uk/UNPG ``recognition/models/build.py`` (filter, pairing) and ``recognition/models/head.py``
(the concatenated CE); docs/losses.md section 4.

The extra columns are the same for every row, so instead of concatenating them this module adds their
log-sum-exp ``A = logsumexp(s * S'^n)`` to each row's log-sum-exp:
``unpg_loss = mean_i(logaddexp(lse_i, A) - lse_i)``, and ``margin_loss + unpg_loss`` equals the concatenated
CE exactly (hard or soft labels: the extra columns carry no target mass). That shortcut is the spec's [INFER]
suggestion; the loss it computes is the code's. Also reconstructions, not from the code: the ``gather`` option
(the authors left cross-GPU gathering unimplemented), the mixed-batch policy, and applying UNPG to the first
view only when a view-producing regulariser (CoReFace) is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from finetune.context import LossContext
from finetune.regularisers.base import Regulariser, RegulariserConfig
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS
from lafs.schedules import WeightSchedule


@dataclass
class UNPGConfig(RegulariserConfig):
    # The paper has no lambda (the negatives enter the CE directly); 1.0 makes margin + unpg the paper's loss.
    weight: WeightSchedule = field(default_factory=lambda: WeightSchedule(kind="constant", value=1.0))
    whisker: float = 1.5  # Tukey k: the released MS1MV2 R100 checkpoints are "wisk1.5" (1.0 for K-FACE R34)
    gather: bool = False  # per-rank pairs as the authors (they saw degradation under DDP and never gathered)
    mixed_batches: Literal["skip", "dominant"] = "skip"  # spec 9.1 rule 5: pair terms skip mixup batches

    def validate(self) -> None:
        self.weight.validate()
        if math.isnan(self.whisker) or self.whisker < 0:
            raise ConfigError(f"unpg.whisker must be >= 0 (inf keeps every pair), got {self.whisker}")
        if self.mixed_batches not in ("skip", "dominant"):
            raise ConfigError(f"unpg.mixed_batches must be 'skip' or 'dominant', got {self.mixed_batches!r}")


def negative_pairs(similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The in-batch negative similarities (n,): entries i < j of similarity (N, N) with different labels (N,).

    Labels < 0 (unknown identity) pair with nothing.
    """
    n = similarity.shape[0]
    rows, cols = torch.triu_indices(n, n, offset=1, device=similarity.device)
    keep = (labels[rows] != labels[cols]) & (labels[rows] >= 0) & (labels[cols] >= 0)
    return similarity[rows[keep], cols[keep]]


@torch.no_grad()
def tukey_keep(values: torch.Tensor, whisker: float) -> torch.Tensor:
    """Boolean mask (n,) of values (n,) inside the Tukey fences ``[Q1 - k IQR, Q3 + k IQR]``.

    Quartiles are index-based as in the UNPG code: ``Q1 = q[floor(n/4)]``, ``Q3 = q[floor(3n/4)]`` of the
    ascending sort, no interpolation. The selection is not differentiable; the kept values stay so.
    """
    n = values.numel()
    if n == 0 or math.isinf(whisker):
        # inf * IQR would be nan when IQR = 0, which would drop everything.
        return torch.ones_like(values, dtype=torch.bool)
    q = values.detach().flatten().sort().values
    q1, q3 = q[math.floor(0.25 * n)], q[math.floor(0.75 * n)]
    iqr = q3 - q1
    return (values >= q1 - whisker * iqr) & (values <= q3 + whisker * iqr)


def unpg_addon(
    lse: torch.Tensor, negatives: torch.Tensor, scale: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Scalar ``mean_i(logaddexp(lse_i, logsumexp(scale * negatives)) - lse_i)`` for negatives (n,) and each row's
    log-sum-exp ``lse`` (B,) over the class logits (`LossContext.log_partition`: Partial FC's spans processes).

    ``valid`` (B,) bool limits the mean to the rows the base CE counts (labels != -1). Zero when n = 0.
    """
    # Half precision in, float32 out (as the base CE); float64 stays float64 so tests can pin values.
    dtype = torch.promote_types(lse.dtype, torch.float32)
    if negatives.numel() == 0:
        return lse.new_zeros((), dtype=dtype)
    lse = lse.to(dtype)
    extra = torch.logsumexp(scale * negatives.to(dtype), dim=0)
    gain = torch.logaddexp(lse, extra) - lse
    if valid is not None:
        if not bool(valid.any()):
            return lse.new_zeros((), dtype=dtype)
        gain = gain[valid]
    return gain.mean()


class UNPG(Regulariser):
    """The UNPG negatives as an additive term ``unpg_loss`` on the first view's margin logits."""

    def __init__(self, whisker: float = 1.5, gather: bool = False, mixed_batches: str = "skip") -> None:
        super().__init__()
        self.whisker, self.gather, self.mixed_batches = float(whisker), gather, mixed_batches

    def forward(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        """``{"unpg_loss": scalar}`` from view 0's row log-sum-exp (B,), ctx.embeddings[0] (B, d), ctx.labels (B,)."""
        lse = ctx.log_partition()[0]
        if ctx.mixed and self.mixed_batches == "skip":
            return {"unpg_loss": lse.new_zeros(())}
        embeddings, labels = F.normalize(ctx.embeddings[0], dim=-1), ctx.labels
        if self.gather:
            embeddings, labels = self._gathered(embeddings, labels, ctx)
        values = negative_pairs(embeddings @ embeddings.t(), labels)
        values = values[tukey_keep(values, self.whisker)]
        # Rows labelled -1 are ignored by the hard-label CE, so they must not count here either.
        valid = None if ctx.soft_labels is not None else ctx.labels >= 0
        # The margin loss averages its views (CoReFace makes two); the pairs join view 0's denominator only.
        views = ctx.embeddings.shape[0]
        return {"unpg_loss": unpg_addon(lse, values, ctx.head.scale, valid) / views}

    @staticmethod
    def _gathered(local: torch.Tensor, labels: torch.Tensor, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Every process's normalised embeddings (N, d) and labels (N,), all with gradient.

        The gather is differentiable: the pair term of every process reaches this process's rows (a detached
        gather left only the local share, about 1 / processes of the true gradient once DDP averaged).
        """
        gathered = ctx.comm.gather_with_grad(local)
        start, b = ctx.comm.rank * local.shape[0], local.shape[0]
        if gathered.shape[0] < start + b or not torch.equal(gathered[start : start + b].detach(), local.detach()):
            raise ConfigError("unpg.gather: this process's rows are not its chunk of the gathered batch")
        return gathered, ctx.comm.gather(labels)

    def extra_repr(self) -> str:
        return f"whisker={self.whisker}, gather={self.gather}, mixed_batches={self.mixed_batches}"


@REGULARISERS.register("unpg")
def build_unpg(cfg: UNPGConfig, *, num_classes: int, embed_dim: int, num_samples: int) -> UNPG:
    """UNPG from its config (no state: the class count, width and data set size are not needed)."""
    cfg.validate()
    return UNPG(whisker=cfg.whisker, gather=cfg.gather, mixed_batches=cfg.mixed_batches)
