"""Encoders: the landmark-token ViT and its registered sizes."""

from __future__ import annotations

from dataclasses import dataclass

from lafs.models.tokenizer import LandmarkPatchEmbed
from lafs.models.vit import LandmarkViT
from lafs.registry import ENCODERS


@dataclass
class EncoderConfig:
    name: str = "lafs_vit_nano_p8_112"  # registered size; nano keeps CPU runs to minutes
    landmark_set: str = "mediapipe196"  # K = 196, the token count LAFS uses
    drop_path_rate: float = 0.0  # stochastic depth; LAFS pretraining uses 0.1 at ViT-B scale


def build_encoder(cfg: EncoderConfig) -> LandmarkViT:
    """An untrained encoder of the configured size (unknown names are a one-line ConfigError)."""
    return ENCODERS.get(cfg.name)(landmark_set=cfg.landmark_set, drop_path_rate=cfg.drop_path_rate)


__all__ = ["EncoderConfig", "LandmarkPatchEmbed", "LandmarkViT", "build_encoder"]
