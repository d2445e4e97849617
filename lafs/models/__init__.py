"""Encoders, all registered with timm: the landmark-token ViT sizes, IResNets, any timm model (``timm:<name>``),
and the released LAFS Part fViT (`PartFViT`, a landmark-token ViT).

Every encoder is called ``encoder(images, landmarks=None)`` and returns embeddings (batch, num_features); only the
landmark-token ViT reads the landmarks (`takes_landmarks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeGuard

from lafs.errors import ConfigError
from lafs.models.image_only import ImageOnlyEncoder
from lafs.models.iresnet import IResNet
from lafs.models.partfvit import SIZES as PARTFVIT_SIZES
from lafs.models.partfvit import PartFViT  # registers the released Part fViT
from lafs.models.released_mobilenet import ReleasedLandmarkNet  # registers its folder loader (load_landmark_predictor)
from lafs.models.timm_encoder import ARCHITECTURE as TIMM_ARCHITECTURE
from lafs.models.timm_encoder import PREFIX as TIMM_PREFIX
from lafs.models.timm_encoder import TimmEncoder
from lafs.models.token_geometry import LandmarkFit
from lafs.models.tokenizer import LandmarkPatchEmbed
from lafs.models.vit import SIZES, LandmarkViT
from lafs.registry import ENCODERS

Encoder = LandmarkViT | ImageOnlyEncoder


@dataclass
class EncoderConfig:
    # The default is the smallest landmark ViT (4 blocks of width 128): minutes on a CPU.
    name: str = "lafs_vit_nano_p8_112"  # lafs_vit_{nano,small,base}_p8_112 (landmark tokens), iresnet18..200, timm:NAME
    landmark_set: str = "mediapipe196"  # the K token landmarks (mediapipe196: LAFS's K; landmark-token ViTs only)
    drop_path_rate: float = 0.0  # stochastic depth; LAFS pretraining uses 0.1 at ViT-B scale
    # Where tokens sample, inside the model (pretraining, fine-tuning, evaluation and export agree): minmax = the
    # released LAFS rescaling of each image's landmarks over the crop, none = the points as given. minmax_axes
    # rescales x and y separately (not released). "none" until a measurement picks the default.
    landmark_fit: LandmarkFit = "none"
    embed_dim: int = 512  # embedding size of IResNet and timm: encoders (insightface's); a ViT's is its width
    model_args: dict[str, Any] = field(default_factory=dict)  # more constructor arguments (IResNet widths, ...)

    @property
    def takes_landmarks(self) -> bool:
        """The encoder samples its tokens at landmarks (a landmark-token ViT), rather than reading images only."""
        return self.name in SIZES or self.name in PARTFVIT_SIZES

    def validate(self) -> None:
        if self.embed_dim < 1:
            raise ConfigError(f"encoder.embed_dim must be >= 1, got {self.embed_dim}")
        if self.name not in ENCODERS:
            raise ConfigError(f"encoder.name: unknown encoder {self.name!r} (known: {', '.join(ENCODERS.names())})")
        if self.landmark_fit != "none" and (self.name in PARTFVIT_SIZES or not self.takes_landmarks):
            raise ConfigError(
                f"encoder.landmark_fit must be none for {self.name} (a Part fViT's landmark network min-maxes its "
                f"points itself; image-only encoders have no tokens), got {self.landmark_fit}"
            )

    def require_landmark_set(self, data_landmark_set: str) -> None:
        """Raise `ConfigError` unless the encoder embeds the landmark set the data carries (image-only: no need)."""
        if self.takes_landmarks and self.landmark_set != data_landmark_set:
            raise ConfigError(
                f"encoder.landmark_set '{self.landmark_set}' must equal data.landmark_set '{data_landmark_set}' (the "
                f"encoder embeds the landmarks the data carries): set both, e.g. data.landmark_set={self.landmark_set} "
                f"encoder.landmark_set={self.landmark_set}"
            )

    def builder_args(self) -> dict[str, Any]:
        """Keyword arguments of the registered builder: the landmark set of a ViT, the embedding size of others."""
        if self.takes_landmarks:
            shape: dict[str, Any] = {"landmark_set": self.landmark_set, "landmark_fit": self.landmark_fit}
        else:
            shape = {"num_features": self.embed_dim}
        return {**shape, "drop_path_rate": self.drop_path_rate, **self.model_args}


def build_any_encoder(cfg: EncoderConfig) -> Encoder:
    """An untrained encoder of the configured kind and size (unknown names are a one-line ConfigError)."""
    return ENCODERS.get(cfg.name)(**cfg.builder_args())


def build_encoder(cfg: EncoderConfig) -> LandmarkViT:
    """An untrained landmark-token ViT, for the stages that need landmark tokens (LAFS pretraining, the demo).

    An image-only name (IResNet, ``timm:``) is a one-line ConfigError; fine-tuning builds any with
    `build_any_encoder`.
    """
    if not cfg.takes_landmarks:
        ENCODERS.get(cfg.name)  # an unknown name gets the registry's message
        raise ConfigError(
            f"encoder.name={cfg.name} reads images only; this stage needs a landmark-token ViT ({', '.join(SIZES)})"
        )
    encoder = build_any_encoder(cfg)
    assert isinstance(encoder, LandmarkViT)  # the registered sizes are LandmarkViTs
    return encoder


def encoder_name(encoder: Encoder) -> str:
    """The ``encoder.name`` that builds ``encoder``'s architecture (``timm:<model>`` for a wrapped timm model)."""
    if isinstance(encoder, TimmEncoder):
        return f"{TIMM_PREFIX}{encoder.backbone_name}"
    return str(encoder.pretrained_cfg["architecture"])


def takes_landmarks(encoder: Encoder) -> TypeGuard[LandmarkViT]:
    """``encoder`` samples its tokens at landmarks (the landmark-token ViT); the others read images only."""
    return isinstance(encoder, LandmarkViT)


__all__ = [
    "TIMM_ARCHITECTURE",
    "Encoder",
    "EncoderConfig",
    "IResNet",
    "ImageOnlyEncoder",
    "LandmarkFit",
    "LandmarkPatchEmbed",
    "LandmarkViT",
    "PartFViT",
    "ReleasedLandmarkNet",
    "TimmEncoder",
    "build_any_encoder",
    "build_encoder",
    "encoder_name",
    "takes_landmarks",
]
