"""LAFS landmark-position regulariser (Sun et al., LAFS, CVPR 2024, arXiv 2403.08161).

When fine-tuning with a trainable landmark predictor, the recognition loss moves the landmarks through the
grid_sample tokenizer; this term keeps them near a reference: ``mean((l_student - l_reference)^2) / (size - 1)^2``
over batch x K x 2 (LAFS: ``MSELoss(l_T / 111, l_S / 111)`` at 112 px), with LAFS's piecewise weight
1000 -> 100 -> 1 -> 0.11 -> 0 at epochs 8, 14, 21 and 28 (szlbiubiubiu/LAFS_CVPR2024 ``train_largescale.py``).
The released LAFS code hard-codes the term off (``pre_land = keep_land = False``); it also builds layer-decay
groups that would put the landmark net in layer 0, but its optimiser never applies them, so the net trains at the
full rate. Here the term is a config switch, and ``optim.layer_decay`` is applied, with the predictor in the stem's
layer (docs/departures.md). The reference is a frozen copy of the initial predictor
(LAFS) or the landmarks the dataset carries (a MediaPipe cache): ``landmarks.reference`` in the fine-tuning config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from finetune.context import LossContext
from finetune.regularisers.base import Regulariser, RegulariserConfig
from lafs.registry import REGULARISERS
from lafs.schedules import LAFS_FINETUNE_EPOCHS, WeightSchedule


def _lafs_schedule() -> WeightSchedule:
    return WeightSchedule(kind="piecewise", boundaries=[8, 14, 21, 28], values=[1000.0, 100.0, 1.0, 0.11, 0.0])


@dataclass
class LandmarkConfig(RegulariserConfig):
    recipe_epochs: ClassVar[float] = LAFS_FINETUNE_EPOCHS  # the boundaries 8/14/21/28 are of LAFS's 34 epochs
    weight: WeightSchedule = field(default_factory=_lafs_schedule)  # LAFS train_largescale.py's schedule


class LandmarkPosition(Regulariser):
    """MSE between the landmarks the encoder sampled at and the reference, in units of the image side."""

    requires = frozenset({"landmarks", "reference_landmarks"})

    def forward(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        if ctx.landmarks is None or ctx.reference_landmarks is None:  # `requires` makes the objective check this
            raise ValueError("landmark regulariser: LossContext.landmarks and reference_landmarks are required")
        scale = 1.0 / (ctx.image_size - 1)  # LAFS divides 112-pixel coordinates by 111
        student = ctx.landmarks.float() * scale
        reference = ctx.reference_landmarks.detach().float() * scale
        return {"landmark_loss": F.mse_loss(student, reference)}


@REGULARISERS.register("landmark")
def build_landmark(cfg: LandmarkConfig, *, num_classes: int, embed_dim: int, num_samples: int) -> LandmarkPosition:
    return LandmarkPosition()
