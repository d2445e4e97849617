"""The model fine-tuning trains: the encoder, where its landmarks come from, and the objective (head + regularisers).

One module, so DDP synchronises the replicated class centres with the encoder (Partial FC's shards stay out of it:
`finetune.objective.Objective` holds them aside). Landmarks come from the batch (a MediaPipe
cache or the template), or from a trainable landmark predictor placed before the grid_sample tokenizer, through
which the recognition loss reaches it (LAFS fine-tuning).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finetune.objective import Objective
from lafs.models.landmark_predictor import LandmarkPredictor
from lafs.models.vit import LandmarkViT


class FinetuneModel(nn.Module):
    """``encoder`` + optional ``landmark_predictor`` + ``objective``; ``forward`` returns the objective's terms."""

    def __init__(
        self, encoder: LandmarkViT, objective: Objective, landmark_predictor: LandmarkPredictor | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.landmark_predictor = landmark_predictor
        self.objective = objective

    def embed(
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings (B, d) of normalised images (B, 3, H, W) and the landmarks (B, K, 2) they were sampled at.

        The predictor, when there is one, overrides ``landmarks``; without either the encoder uses its template.
        """
        if self.landmark_predictor is not None:
            landmarks = self.landmark_predictor(images)
        return self.encoder(images, landmarks), landmarks

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, landmarks: torch.Tensor | None = None, **context: Any
    ) -> dict[str, torch.Tensor]:
        """The objective's named terms; ``context`` goes to `Objective.forward` (epoch, step, indices, ...)."""
        features, used = self.embed(images, landmarks)
        # Margins on cosines near +-1 need float32: bf16 carries 3 significant digits.
        with torch.autocast(images.device.type, enabled=False):
            return self.objective(features.float(), labels, landmarks=used, image_size=images.shape[-1], **context)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # The landmark predictor shares the stem's layer (LAFS: layer-decay id 0, so it barely moves by default);
        # the head matches nothing and so gets the full learning rate, like the last layer.
        return {
            "stem": r"^encoder\.(?:cls_token|pos_embed|patch_embed)|^landmark_predictor\.",
            "blocks": [(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))],
        }
