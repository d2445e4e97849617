"""A learned landmark predictor: a small timm CNN regressing the K landmarks of an aligned face.

    images (B, 3, H, W) normalised to [-1, 1]  ->  landmarks (B, K, 2) float pixels (x, y), pixel j spans [j, j+1)

Architecture (LAFS, after Part-fViT): a timm backbone (MobileNetV3-large by default, built with
``pretrained=False``) pooled to one feature vector, Dropout 0.5, then one Linear layer to K * 2 numbers.

Departure from LAFS: LAFS min-max rescales the raw 2K-vector into [0, 111] per image, which forces every face's
landmarks to touch both image borders and is not a pixel regression at all. Here the output is parametrised as
**template + offset**: ``landmarks = template + scale * linear(features)``, where ``template`` is the landmark set's
mean aligned face (`scaled_template`, a buffer) and the Linear layer starts at zero. An untrained predictor
therefore returns exactly the template, which is what the tokenizer would use anyway: a sane starting point for
end-to-end fine-tuning through the grid_sample tokenizer, and a plain pixel regression target for distillation.
``scale`` is ``image_size / 8`` pixels per output unit (14 px at 112): ArcFace-aligned faces deviate from the
template by a few to ~15 px (pose, expression, alignment error), so the regression targets are O(1) numbers, the
range standard initialisations and learning rates are made for.

One consequence of the zero start: at the very first step only the Linear layer gets a gradient (the backbone's
gradient flows through the Linear weights, which are zero); from the second step on everything trains.

Stand-alone folders (`save_landmark_predictor`, `load_landmark_predictor`) hold ``model.safetensors`` and
``config.json``, written whole or not at all, like exported encoders (`lafs.export`). No ``.cuda()`` and no numpy
in ``forward``, so the model moves with ``.to(device)`` / accelerate and exports to ONNX with a dynamic batch.

Not registered as a landmark source (`lafs.registry.LANDMARK_SOURCES`): sources are built from a landmark set name
alone (``LANDMARK_SOURCES.get(name)(landmark_set)``), and a predictor is useless without its trained weights folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lafs.errors import ConfigError, DataError
from lafs.files import read_weights_folder, save_weights_folder
from lafs.landmarks.sets import get_landmark_set
from lafs.landmarks.sources import scaled_template
from lafs.registry import Registry

PREDICTOR_FORMAT = "lafs-landmark-predictor"
PREDICTOR_VERSION = 1
OFFSET_DIVISOR = 8  # scale = image_size / 8 px per output unit: typical offsets from the template become O(1)


@dataclass
class LandmarkPredictorConfig:
    backbone: str = "mobilenetv3_large_100"  # timm CNN, built with pretrained=False (LAFS: MobileNetV3-large)
    landmark_set: str = "mediapipe196"  # the K points to predict; must match the encoder that consumes them
    image_size: int = 112  # square input (and pixel frame of the output): the ArcFace crop the encoders take
    dropout: float = 0.5  # before the regression layer (LAFS)

    def validate(self) -> None:
        """Raise `ConfigError` for a predictor that cannot be built."""
        if not timm.is_model(self.backbone):
            raise ConfigError(f"landmark predictor backbone '{self.backbone}' is not a timm model")
        if self.image_size < 32:
            # timm CNNs downsample by 32; smaller inputs leave no spatial extent to pool.
            raise ConfigError(f"landmark predictor image_size must be at least 32 pixels, got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"landmark predictor dropout must lie in [0, 1), got {self.dropout}")
        get_landmark_set(self.landmark_set)  # raises ConfigError for an unknown name


class LandmarkPredictor(nn.Module):
    """timm backbone -> pooled features -> Dropout -> Linear(features, K * 2), read as offsets from the template."""

    template: torch.Tensor  # the buffer registered in __init__ (nn.Module.__getattr__ would type it Tensor | Module)

    def __init__(self, cfg: LandmarkPredictorConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_landmarks = get_landmark_set(cfg.landmark_set).num_landmarks
        self.scale = cfg.image_size / OFFSET_DIVISOR
        self.backbone = timm.create_model(cfg.backbone, pretrained=False, num_classes=0)
        # MobileNetV3 and friends add a conv head after pooling: its width, not num_features, is what comes out.
        # (Every timm model sets an int num_features; create_model is typed as returning a plain nn.Module.)
        features = int(getattr(self.backbone, "head_hidden_size", None) or cast(int, self.backbone.num_features))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(features, self.num_landmarks * 2)
        # Zero start: an untrained predictor returns exactly the template.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        template = torch.from_numpy(scaled_template(cfg.landmark_set, cfg.image_size, cfg.image_size))
        self.register_buffer("template", template, persistent=True)  # (K, 2) pixels

    @property
    def landmark_set(self) -> str:
        return self.cfg.landmark_set

    def folder_config(self, source: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config.json of this predictor's saved folder (`save_landmark_predictor`); ``source``: where it came
        from. The released landmark network, a subclass, writes its own."""
        return {
            "format": PREDICTOR_FORMAT,
            "version": PREDICTOR_VERSION,
            "config": dataclasses.asdict(self.cfg),
            "num_landmarks": self.num_landmarks,
            "scale": self.scale,
            "input": "images (batch, 3, H, W) float32 in [-1, 1] (pixel / 127.5 - 1), RGB",
            "output": "landmarks (batch, K, 2) float32 pixels (x, y); pixel j spans [j, j + 1)",
            "source": source or {},
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (batch, 3, H, W) in [-1, 1] -> landmarks (batch, K, 2) float pixels (x, y)."""
        features = self.dropout(self.backbone(images))
        offsets = self.head(features).reshape(-1, self.num_landmarks, 2)
        return self.template + self.scale * offsets


def build_landmark_predictor(cfg: LandmarkPredictorConfig) -> LandmarkPredictor:
    """An untrained predictor (it returns the template until trained); bad options are a one-line `ConfigError`."""
    return LandmarkPredictor(cfg)


def save_landmark_predictor(
    model: LandmarkPredictor, folder: str | os.PathLike[str], source: dict[str, Any] | None = None
) -> Path:
    """Write ``folder`` (model.safetensors + config.json) whole or not at all: built beside it, then renamed."""
    return save_weights_folder(model, folder, model.folder_config(source))


# Loaders of predictor folders other than this module's, by config.json "kind" (the released landmark network's
# module registers its own): loading dispatches here, so this module imports none of them.
FOLDER_LOADERS: Registry[Callable[[str | os.PathLike[str], dict[str, Any], Path], LandmarkPredictor]] = Registry(
    "landmark predictor folder kind"
)


def load_landmark_predictor(folder: str | os.PathLike[str]) -> LandmarkPredictor:
    """Rebuild a saved predictor (in eval mode); a missing or mismatched folder is a one-line `DataError`."""
    config, weights = read_weights_folder(folder, PREDICTOR_FORMAT, "a saved landmark predictor")
    if config.get("version") != PREDICTOR_VERSION:
        raise DataError(f"{folder}: {PREDICTOR_FORMAT} version {config.get('version')}, expected {PREDICTOR_VERSION}")
    kind = config.get("kind")
    if isinstance(kind, str) and kind in FOLDER_LOADERS:
        return FOLDER_LOADERS.get(kind)(folder, config, weights)
    try:
        cfg = LandmarkPredictorConfig(**config["config"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{folder}: config.json has no usable 'config' entry ({exc})") from None
    try:
        model = LandmarkPredictor(cfg)
    except ConfigError as exc:
        raise DataError(f"{folder}: config.json: {exc}") from None
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError, SafetensorError) as exc:
        raise DataError(f"{folder}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None
    return model.eval()
