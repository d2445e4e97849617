"""The released LAFS landmark network: MobileNetV3-large features, spatial mean, Dropout + Linear, min-max to pixels.

    images (B, 3, 112, 112) RGB in [-1, 1]  ->  landmarks (B, K, 2) pixels (x, y), K = 196

This is the landmark CNN of the released Part fViT (szlbiubiubiu/LAFS_CVPR2024, ``face_pre_pro/mobilenet.py``
``MobileNetV3_backbone(mode='large')`` plus the ``output_layer`` of ``ViT_face_landmark_patch8``), which the paper's
pretraining uses to place every token. Module names follow the released ones (``stn.features.<i>...``,
``output_layer.1``), so a released state dict loads 1:1 (`lafs.export.released`).

Reproduced as released, quirks included:

- **BGR input.** The released models were trained on BGR images in [-1, 1]. ``forward`` takes the project's RGB and
  flips the channels itself (also inside an ONNX export): callers never flip.
- **MobileNetV3-large of the paper's Table 1, cut after the last bottleneck** (160 channels; no final 1 x 1 conv,
  pooling or classifier), then the mean over the 4 x 4 feature map, Dropout(0.5) and Linear(160, 2K).
- **Squeeze-excite inside the bottleneck sits after the depthwise BatchNorm and before the activation** (standard
  MobileNetV3 puts it after the activation), its Linear layers have no bias, the reduction is exactly
  ``channels // 4`` (18, 30, 120, 168, 240 channels: not rounded to a multiple of 8) and its gate is a hard sigmoid.
- **Min-max rescaling over all 2K numbers at once**: one minimum and one maximum per image across x *and* y, mapped
  to [0, 111]; so every face's landmarks touch 0 and 111 in one coordinate each, and x and y share one scale. No
  epsilon: a constant output divides by zero, as in the released code.
- **Initialisation**: Kaiming-normal (fan out) convolutions, unit BatchNorm, N(0, 0.01) Linear layers inside the
  backbone, PyTorch's default for ``output_layer``.

Usable wherever a `lafs.models.landmark_predictor.LandmarkPredictor` is (it subclasses it): image-only encoders,
exported ONNX models, fine-tuning (``landmarks.source=predictor``) and pretraining (``landmark_predictor=``). Its
folder is a landmark-predictor folder whose config.json says ``"kind": "released-lafs-mobilenetv3"``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lafs.errors import ConfigError, DataError
from lafs.landmarks.sets import get_landmark_set
from lafs.models.landmark_predictor import (
    FOLDER_LOADERS,
    PREDICTOR_FORMAT,
    PREDICTOR_VERSION,
    LandmarkPredictor,
    LandmarkPredictorConfig,
)

RELEASED_KIND = "released-lafs-mobilenetv3"  # config.json "kind" of a released landmark-network folder
RELEASED_BACKBONE = "released_mobilenetv3_large"  # the name recorded as its backbone (not a timm model)
IMAGE_SIZE = 112  # the released network's input side; its min-max maps to [0, IMAGE_SIZE - 1]
FEATURES = 160  # channels of the last MobileNetV3-large bottleneck
CHANNEL_ORDER = "bgr"  # what the released weights were trained on; forward flips RGB input itself

# MobileNetV3-large bottlenecks (Howard et al. 2019, Table 1): kernel, expansion, output channels, squeeze-excite,
# activation (ReLU or hard swish), stride.
LARGE_BOTTLENECKS: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2),
    (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1),
    (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2),
    (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
)
STEM_CHANNELS = 16

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "hswish": nn.Hardswish}


class SqueezeExcite(nn.Module):
    """Channel gate of the released bottlenecks: mean -> Linear -> ReLU -> Linear -> hard sigmoid, no biases."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = channels // reduction  # released: not rounded to a multiple of 8
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps (B, C, H, W) scaled per channel by a gate computed from their spatial mean."""
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class Bottleneck(nn.Module):
    """Inverted residual: 1 x 1 expand, depthwise k x k, (squeeze-excite), activation, 1 x 1 project.

    ``conv`` indices match the released ``MobileBottleneck.conv``: 0 conv, 1 BN, 2 act, 3 depthwise, 4 BN, 5 SE (or
    identity), 6 act, 7 conv, 8 BN.
    """

    def __init__(
        self, inputs: int, outputs: int, kernel: int, expansion: int, excite: bool, activation: str, stride: int
    ) -> None:
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.residual = stride == 1 and inputs == outputs
        self.conv = nn.Sequential(
            nn.Conv2d(inputs, expansion, 1, 1, 0, bias=False),
            nn.BatchNorm2d(expansion),
            act(inplace=True),
            nn.Conv2d(expansion, expansion, kernel, stride, (kernel - 1) // 2, groups=expansion, bias=False),
            nn.BatchNorm2d(expansion),
            SqueezeExcite(expansion) if excite else nn.Identity(),
            act(inplace=True),
            nn.Conv2d(expansion, outputs, 1, 1, 0, bias=False),
            nn.BatchNorm2d(outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV3Large(nn.Module):
    """The released ``MobileNetV3_backbone(mode='large')``: stem + 15 bottlenecks, (B, 3, H, W) -> (B, 160, h, w).

    ``h, w`` are H and W over 32, rounded up (4 x 4 for 112 x 112).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM_CHANNELS), nn.Hardswish(True)
            )
        ]
        channels = STEM_CHANNELS
        for kernel, expansion, outputs, excite, activation, stride in LARGE_BOTTLENECKS:
            layers.append(Bottleneck(channels, outputs, kernel, expansion, excite, activation, stride))
            channels = outputs
        self.features = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def minmax_landmarks(values: torch.Tensor, span: float = IMAGE_SIZE - 1) -> torch.Tensor:
    """Raw outputs (B, 2K) -> landmarks (B, K, 2): one min and one max per image over all 2K numbers, to [0, span]."""
    low = values.min(dim=1, keepdim=True).values
    high = values.max(dim=1, keepdim=True).values
    return ((values - low) / (high - low) * span).reshape(values.shape[0], -1, 2)


class ReleasedLandmarkNet(LandmarkPredictor):
    """The released landmark network (module docstring); a `LandmarkPredictor` with the released architecture.

    ``stn`` and ``output_layer`` carry the released names. ``cfg`` records the landmark set (its K must be 196 for
    released weights) and the input size; its ``backbone`` names this architecture, which timm does not build.
    """

    def __init__(self, landmark_set: str = "mediapipe196", dropout: float = 0.5) -> None:
        # Not LandmarkPredictor.__init__: that builds a timm backbone and a template + offset head, which the
        # released network does not have. The attributes its users read (cfg, num_landmarks, scale) are set here.
        nn.Module.__init__(self)
        self.cfg = LandmarkPredictorConfig(RELEASED_BACKBONE, landmark_set, IMAGE_SIZE, dropout)
        self.num_landmarks = get_landmark_set(landmark_set).num_landmarks
        self.scale = float(IMAGE_SIZE - 1)  # the span of the min-max rescaling, in pixels
        self.stn = MobileNetV3Large()
        self.output_layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURES, 2 * self.num_landmarks))

    def raw_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """The 2K numbers (B, 2K) before min-max, for RGB images (B, 3, H, W) in [-1, 1]."""
        features = self.stn(images.flip(1))  # RGB -> BGR, what the released weights saw
        return self.output_layer(features.mean(dim=(-2, -1)))

    def folder_config(self, source: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config.json of a released landmark-network folder (its ``kind`` brings loading back here)."""
        return {
            "format": PREDICTOR_FORMAT,
            "version": PREDICTOR_VERSION,
            "kind": RELEASED_KIND,
            "config": dataclasses.asdict(self.cfg),
            "num_landmarks": self.num_landmarks,
            "scale": self.scale,
            "channel_order": CHANNEL_ORDER,
            "input": "images (batch, 3, 112, 112) float32 in [-1, 1] (pixel / 127.5 - 1), RGB: flipped to BGR inside",
            "output": "landmarks (batch, K, 2) float32 pixels (x, y) min-max rescaled per image to span [0, 111]",
            "source": source or {},
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images (B, 3, 112, 112) in [-1, 1] -> landmarks (B, K, 2) pixels (x, y) spanning [0, 111]."""
        return minmax_landmarks(self.raw_outputs(images))


@FOLDER_LOADERS.register(RELEASED_KIND)
def load_released_landmark_net(
    folder: str | os.PathLike[str], config: dict[str, Any], weights: Path
) -> ReleasedLandmarkNet:
    """Rebuild a released landmark network from its folder's config.json (read) and weights (eval mode)."""
    try:
        model = ReleasedLandmarkNet(config["config"]["landmark_set"], float(config["config"]["dropout"]))
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise DataError(f"{folder}: config.json has no usable 'config' entry ({exc})") from None
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError, SafetensorError) as exc:
        raise DataError(f"{folder}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None
    return model.eval()
