"""The fine-tuning loss: margin cross-entropy plus ``sum_r lambda_r(t) * R_r``, as a dict of named terms.

    terms = objective(features, labels, epoch=..., step=..., ...)
    terms["loss"].backward(); objective.update()

Rules (docs/losses.md section 7): a regulariser whose lambda(t) is 0 is not computed at all, so the loss
is the base loss (model-side hooks aside: CoReFace's dropout, the cluster margins' base margin); the fields a
regulariser ``requires`` are checked on the first call; every term is returned without its lambda(t)
(``*_loss``; some include their own inner weights, as docs/losses.md section 7 lists) and ``lambdas(epoch)`` gives
the weights for the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from finetune.context import Communicator, LossContext
from finetune.heads import MarginHead, margin_cross_entropy
from finetune.partial_fc import PartialFC, ShardedScores
from finetune.regularisers import Regulariser, RegularisersConfig
from finetune.regularisers.base import ViewSource
from lafs.engine import OptimConfig
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS
from lafs.schedules import WeightSchedule

# Regularisers that read only this process's rows and each row's log-sum-exp over the classes: they work with
# sharded centres. The others read every class centre (cluster's alignment, its per-class margins) or every class's
# cosine (IntraLoss's nearest non-target) on every process.
WORK_WITH_PARTIAL_FC = frozenset({"unpg", "coreface", "landmark"})


class Objective(nn.Module):
    """The margin head and the regularisers; owns their parameters and state (so checkpoints capture both).

    A `PartialFC` head is held aside, not as a submodule: DDP must not average its shard, the model's checkpoint
    (the main process's) must not hold it, and gradient clipping must not mix the processes' shard norms. The task
    places it, trains it and checkpoints it per process.
    """

    head: MarginHead | PartialFC

    def __init__(
        self, head: MarginHead | PartialFC, regularisers: dict[str, Regulariser], weights: dict[str, WeightSchedule]
    ) -> None:
        super().__init__()
        if set(regularisers) != set(weights):
            raise ValueError("one weight schedule per regulariser")
        if isinstance(head, PartialFC):
            for name in regularisers:
                if name not in WORK_WITH_PARTIAL_FC:
                    raise ConfigError(
                        f"regularisers.{name} reads every class centre on every process: it cannot run with "
                        "head.partial_fc.enabled=true (each process holds a shard)"
                    )
            self.__dict__["head"] = head  # plain attribute: not registered (see the class docstring)
        else:
            self.head = head
        self.regularisers = nn.ModuleDict(regularisers)
        self.weights = weights
        self._checked = False
        self._context: LossContext | None = None

    def _each(self) -> Iterator[tuple[str, Regulariser]]:
        """(name, regulariser) in order; the ModuleDict is typed as holding plain modules, these are regularisers."""
        return ((name, cast(Regulariser, module)) for name, module in self.regularisers.items())

    def lambdas(self, epoch: float) -> dict[str, float]:
        """lambda_r(epoch) of every regulariser."""
        return {name: schedule(epoch) for name, schedule in self.weights.items()}

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        *,
        epoch: float = 0.0,
        step: int = 0,
        soft_labels: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        reference_landmarks: torch.Tensor | None = None,
        image_size: int = 112,
        comm: Communicator | None = None,
        view_source: ViewSource | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named terms for features (B, d) and labels (B,): ``margin_loss``, each regulariser's, and ``loss``.

        ``view_source``: the encoder's embedding layer and its input, for views made before it (CoReFace).
        """
        embeddings = features[None]
        class_margins = None
        for _, regulariser in self._each():
            views = regulariser.embedding_views(features, epoch, view_source)
            embeddings = views if views is not None else embeddings
            margins = regulariser.class_margins()
            class_margins = margins if class_margins is None else class_margins
        fields: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "indices": indices,
            "landmarks": landmarks,
            "reference_landmarks": reference_landmarks,
            "image_size": image_size,
            "comm": comm or Communicator(),
        }
        if isinstance(self.head, PartialFC):  # class_margins: only cluster's, refused with Partial FC
            scores: ShardedScores = self.head(embeddings, labels, soft_labels, fields["comm"], step)
            ctx = LossContext(
                features, embeddings, labels, scores.cosines, scores.logits, self.head,
                soft_labels=soft_labels, lse=scores.lse, **fields,
            )  # fmt: skip
            margin_loss = scores.cross_entropy()
        else:
            ctx = LossContext.from_embeddings(
                self.head, features, embeddings, labels, soft_labels, class_margins, **fields
            )
            margin_loss = margin_cross_entropy(ctx.logits, labels, soft_labels)
        if not self._checked:
            self._check_requirements(ctx)
        terms = {"margin_loss": margin_loss}
        loss = margin_loss
        for name, weight in self.lambdas(epoch).items():
            if weight == 0:
                continue
            for term_name, value in self.regularisers[name](ctx).items():
                terms[term_name] = value
                loss = loss + weight * value
        terms["loss"] = loss
        self._context = ctx
        return terms

    def _check_requirements(self, ctx: LossContext) -> None:
        for name, regulariser in self._each():
            missing = sorted(field for field in regulariser.requires if getattr(ctx, field) is None)
            if missing:
                raise ConfigError(f"regularisers.{name} needs {', '.join(missing)}, which this run does not provide")
        self._checked = True

    @torch.no_grad()
    def update(self) -> None:
        """Regulariser state updates after the step (memory banks, clustering) from the last call's tensors."""
        ctx = self._context
        if ctx is None:
            return
        detached: dict[str, Any] = {  # the context's fields: tensors, numbers and the communicator
            name: value.detach() if torch.is_tensor(value) else value
            for name, value in vars(ctx).items()
            if name != "head"
        }
        for _, regulariser in self._each():
            regulariser.update(LossContext(head=ctx.head, **detached))
        self._context = None


def build_objective(
    head: MarginHead | PartialFC,
    cfg: RegularisersConfig,
    *,
    num_classes: int,
    embed_dim: int,
    num_samples: int,
    optim: OptimConfig | None = None,
) -> Objective:
    """The objective with every enabled regulariser of ``cfg``, their weights in the epochs of the run ``optim``
    describes (its length and its ``schedules`` switch; None: weights in epochs as written, a 10-epoch run for
    fraction units)."""
    enabled = cfg.enabled_in_run(optim or OptimConfig())
    regularisers = {
        name: REGULARISERS.get(name)(options, num_classes=num_classes, embed_dim=embed_dim, num_samples=num_samples)
        for name, options in enabled.items()
    }
    return Objective(head, regularisers, {name: options.weight for name, options in enabled.items()})
