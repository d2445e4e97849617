"""Encoders: the landmark-token ViT and its registered sizes, and the released Part fViT."""

from __future__ import annotations

from dataclasses import dataclass

from lafs.errors import ConfigError
from lafs.models.partfvit import PartFViT  # registers the released Part fViT
from lafs.models.tokenizer import LandmarkPatchEmbed
from lafs.models.vit import LandmarkViT
from lafs.registry import ENCODERS


@dataclass
class EncoderConfig:
    name: str = "lafs_vit_nano_p8_112"  # registered size; nano keeps CPU runs to minutes
    landmark_set: str = "mediapipe196"  # K = 196, the token count LAFS uses
    drop_path_rate: float = 0.0  # stochastic depth; LAFS pretraining uses 0.1 at ViT-B scale

    def require_landmark_set(self, data_landmark_set: str) -> None:
        """Raise `ConfigError` unless the encoder embeds the landmark set the data carries."""
        if self.landmark_set != data_landmark_set:
            raise ConfigError(
                f"encoder.landmark_set '{self.landmark_set}' must equal data.landmark_set '{data_landmark_set}': "
                "the encoder embeds the landmarks the data carries"
            )


def build_encoder(cfg: EncoderConfig) -> LandmarkViT:
    """An untrained encoder of the configured size (unknown names are a one-line ConfigError)."""
    return ENCODERS.get(cfg.name)(landmark_set=cfg.landmark_set, drop_path_rate=cfg.drop_path_rate)


__all__ = ["EncoderConfig", "LandmarkPatchEmbed", "LandmarkViT", "PartFViT", "build_encoder"]
