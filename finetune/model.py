"""The model fine-tuning trains: the encoder, where its landmarks come from, and the objective (head + regularisers).

One module, so DDP synchronises the replicated class centres with the encoder (Partial FC's shards stay out of it:
`finetune.objective.Objective` holds them aside). The encoder is a landmark-token ViT, an IResNet or any timm model
(`lafs.models.Encoder`). A ViT's landmarks come from the batch (a MediaPipe cache or the template), or from a
trainable landmark predictor placed before the grid_sample tokenizer, through which the recognition loss reaches it
(LAFS fine-tuning); image-only encoders ignore landmarks and hand the objective their embedding layer, so
CoReFace's views act before it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finetune.objective import Objective
from finetune.regularisers.base import ViewSource
from lafs.models import Encoder, ImageOnlyEncoder
from lafs.models.landmark_predictor import LandmarkPredictor
from lafs.models.timm_encoder import prefixed_matcher


class FinetuneModel(nn.Module):
    """``encoder`` + optional ``landmark_predictor`` + ``objective``; ``forward`` returns the objective's terms."""

    def __init__(
        self, encoder: Encoder, objective: Objective, landmark_predictor: LandmarkPredictor | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.landmark_predictor = landmark_predictor
        self.objective = objective

    def embed(
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, ViewSource | None]:
        """Embeddings (B, d) of normalised images (B, 3, H, W), the landmarks (B, K, 2) they were sampled at, and
        the encoder's embedding layer with its input (image-only encoders; None for the ViT).

        The predictor, when there is one, overrides ``landmarks``; without either the ViT uses its template.
        """
        if isinstance(self.encoder, ImageOnlyEncoder):
            pre_embedding = self.encoder.forward_pre_embedding(images)
            # float32 for the views: the objective runs outside autocast (arcface_torch's FC is float32 too).
            source = ViewSource(pre_embedding.float(), self.encoder.forward_embedding)
            return self.encoder.forward_embedding(pre_embedding), None, source
        if self.landmark_predictor is not None:
            landmarks = self.landmark_predictor(images)
        return self.encoder(images, landmarks), landmarks, None

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, landmarks: torch.Tensor | None = None, **context: Any
    ) -> dict[str, torch.Tensor]:
        """The objective's named terms; ``context`` goes to `Objective.forward` (epoch, step, indices, ...)."""
        features, used, source = self.embed(images, landmarks)
        # Margins on cosines near +-1 need float32: bf16 carries 3 significant digits.
        with torch.autocast(images.device.type, enabled=False):
            return self.objective(
                features.float(), labels, landmarks=used, image_size=images.shape[-1], view_source=source, **context
            )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # The encoder's own groups under "encoder."; the head matches nothing and so gets the full learning rate,
        # like the last layer. The landmark predictor shares the stem's layer (the layer-decay id 0 the released
        # code assigns it; there its groups are never applied, here optim.layer_decay is).
        matcher = prefixed_matcher(self.encoder.group_matcher(coarse), r"encoder\.")
        if self.landmark_predictor is not None:
            matcher["stem"] = f"{matcher['stem']}|^landmark_predictor\\."
        return matcher
