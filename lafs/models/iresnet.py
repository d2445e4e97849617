"""IResNet (insightface arcface_torch's face ResNets) as timm models: ``iresnet18/34/50/100/200``.

The architecture of ``recognition/arcface_torch/backbones/iresnet.py``: a 112 x 112 stem (3x3 conv of 64, BN,
PReLU), four stages of improved residual units (BN, 3x3 conv, BN, PReLU, 3x3 conv with the stage's stride 2, BN,
plus a 1x1 conv + BN shortcut where the shape changes), then BN on the 7 x 7 map, flatten, dropout, a fully
connected layer to the 512-d embedding and a BatchNorm1d with its scale frozen at 1 ("features").

Parameter and buffer names are arcface_torch's, so its ``backbone.pth`` loads with ``load_state_dict(strict=True)``
(the optional timm classifier, ``head``, is an ``nn.Identity`` without parameters at ``num_classes=0``). Additions
that hold no weights: timm's stochastic depth (``drop_path_rate``, 0 as in arcface_torch), gradient checkpointing,
and ``widths`` / ``img_size`` / ``in_chans`` for other shapes (tests use narrow widths to stay fast). ``fp16=True``
runs the trunk under autocast and the embedding layer in float32, as arcface_torch's ``fp16`` flag does; leave it
off when the run's own mixed precision (accelerate) is on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import DropPath, to_2tuple
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from lafs.models.image_only import ImageOnlyEncoder
from lafs.registry import ENCODERS

# Residual units per stage of each registered depth (arcface_torch's iresnet18 ... iresnet200).
LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)  # channels of the four stages (the stem has the first stage's)


def _conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv(stride)-BN residual unit: (batch, inplanes, H, W) -> (batch, planes, H/s, W/s)."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.drop_path(out) + identity


class IResNet(ImageOnlyEncoder):
    """insightface's IResNet. Inputs: images (batch, in_chans, H, W) normalised to [-1, 1]; ``landmarks`` ignored.

    ``forward_features`` returns the BN'd last map (batch, 512, 7, 7) at 112 x 112; ``forward`` the embedding
    (batch, num_features), or logits when a timm classifier is attached (``num_classes`` > 0).
    """

    def __init__(
        self,
        layers: Sequence[int] = LAYERS["iresnet50"],
        num_features: int = 512,
        dropout: float = 0.0,
        fp16: bool = False,
        widths: Sequence[int] = WIDTHS,
        drop_path_rate: float = 0.0,
        img_size: int | Sequence[int] = 112,
        in_chans: int = 3,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4 or min(*layers, *widths) < 1:
            raise ValueError(f"IResNet needs 4 positive stage depths and widths, got {list(layers)}, {list(widths)}")
        self.fp16, self.num_features, self.grad_checkpointing = fp16, num_features, False
        self.layers, self.widths, self.img_size = tuple(layers), tuple(widths), to_2tuple(img_size)
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        rates = torch.linspace(0, drop_path_rate, sum(layers)).tolist()  # timm's rule: deeper units drop more
        stages = [
            _stage(inplanes, planes, depth, rates)
            for inplanes, planes, depth in zip((widths[0], *widths[:3]), widths, layers, strict=True)
        ]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        height, width = (_after_stages(side) for side in self.img_size)
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)  # not in place: CoReFace reuses the flattened map for its views
        self.fc = nn.Linear(widths[3] * height * width, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self.features.weight.requires_grad_(False)  # arcface_torch freezes the embedding BN's scale at 1
        self._make_head(num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)  # arcface_torch's initialisation
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def rebuild_args(self) -> dict[str, Any]:
        # Shapes only: dropout, fp16 and drop_path_rate are training choices (timm leaves drop rates out too).
        return {
            "layers": list(self.layers),
            "widths": list(self.widths),
            "num_features": self.num_features,
            "img_size": list(self.img_size),
        }

    def _trunk_precision(self, images: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
        # Only ever switches autocast on: a disabled region would also switch off the run's own mixed precision.
        return torch.autocast(images.device.type) if self.fp16 else contextlib.nullcontext()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map after its BN: (batch, 512, H/16, W/16)."""
        with self._trunk_precision(images):
            x = self.prelu(self.bn1(self.conv1(images)))
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = checkpoint_seq(stage, x) if self.grad_checkpointing and self.training else stage(x)
            return self.bn2(x)

    def forward_pre_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The flattened map that enters the FC: (batch, 512 * 7 * 7) at 112 x 112."""
        return torch.flatten(self.forward_features(images), 1)  # NCHW order whatever the memory format

    def forward_embedding(self, pre_embedding: torch.Tensor) -> torch.Tensor:
        """Dropout, FC and the embedding BN: (batch, F) -> (batch, num_features)."""
        x = self.dropout(pre_embedding)
        if self.fp16:  # arcface_torch runs the FC in float32 outside the half-precision trunk
            with torch.autocast(x.device.type, enabled=False):
                return self.features(self.fc(x.float()))
        return self.features(self.fc(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's head: the map (batch, 512, h, w) -> embedding (``pre_logits``) or classifier logits."""
        embedding = self.forward_embedding(torch.flatten(x, 1))
        return embedding if pre_logits else self.head(embedding)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # timm's ResNet grouping: the stem, then one layer-decay step per residual unit (per stage if coarse).
        return {
            "stem": r"^conv1|^bn1|^prelu",
            "blocks": r"^layer(\d+)" if coarse else [(r"^layer(\d+)\.(\d+)", None), (r"^bn2|^fc|^features", (99999,))],
        }


def _stage(inplanes: int, planes: int, depth: int, rates: list[float]) -> nn.Sequential:
    """``depth`` units from ``inplanes`` to ``planes`` channels, halving the map; drop rates come off ``rates``."""
    # Every stage halves the map, so its first unit always has arcface_torch's 1x1 conv + BN shortcut.
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
    )
    units = [IBasicBlock(inplanes, planes, 2, downsample, rates.pop(0))]
    units += [IBasicBlock(planes, planes, drop_path=rates.pop(0)) for _ in range(depth - 1)]
    return nn.Sequential(*units)


def _after_stages(side: int) -> int:
    """Side of the last map: each of the four stride-2 3x3 convs (padding 1) maps n to ceil(n / 2)."""
    for _ in WIDTHS:
        side = math.ceil(side / 2)
    return side


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 112, 112),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,  # the FC reads a fixed-size map
        "mean": (0.5, 0.5, 0.5),  # insightface scales pixels to [-1, 1]
        "std": (0.5, 0.5, 0.5),
        "first_conv": "conv1",
        "classifier": "head",
        "license": "mit",  # insightface's code licence (its released weights are non-commercial)
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in LAYERS})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> IResNet:
    kwargs.setdefault("layers", LAYERS[variant])  # an exported folder's model_args name them too
    return build_model_with_cfg(IResNet, variant, pretrained, **kwargs)


@ENCODERS.register()
@register_model
def iresnet18(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18: stages of 2, 2, 2, 2 units."""
    return _create("iresnet18", pretrained, **kwargs)


@ENCODERS.register()
@register_model
def iresnet34(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34: stages of 3, 4, 6, 3 units."""
    return _create("iresnet34", pretrained, **kwargs)


@ENCODERS.register()
@register_model
def iresnet50(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50: stages of 3, 4, 14, 3 units."""
    return _create("iresnet50", pretrained, **kwargs)


@ENCODERS.register()
@register_model
def iresnet100(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100: stages of 3, 13, 30, 3 units (the fine-tuning papers' backbone)."""
    return _create("iresnet100", pretrained, **kwargs)


@ENCODERS.register()
@register_model
def iresnet200(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200: stages of 6, 26, 60, 6 units."""
    return _create("iresnet200", pretrained, **kwargs)
