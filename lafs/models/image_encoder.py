"""An encoder that needs only images: landmarks from a learned predictor, or the encoder's template."""

from __future__ import annotations

import torch
from torch import nn

from lafs.models import Encoder
from lafs.models.landmark_predictor import LandmarkPredictor


class ImageEncoder(nn.Module):
    """Normalised images (B, 3, H, W) -> embeddings (B, d).

    With a ``landmark_predictor`` the encoder samples its tokens where the predictor puts the landmarks (a
    fine-tuned LAFS model, usable on faces that were not aligned to the template); without one, at its template.
    """

    def __init__(self, encoder: Encoder, landmark_predictor: LandmarkPredictor | None = None) -> None:
        super().__init__()
        self.encoder, self.landmark_predictor = encoder, landmark_predictor

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """``landmarks`` (B, K, 2) are used only when there is no predictor (and default to the template)."""
        if self.landmark_predictor is not None:
            landmarks = self.landmark_predictor(images)
        return self.encoder(images, landmarks)
