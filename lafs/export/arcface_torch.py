"""insightface arcface_torch backbones (``backbone.pth``) as encoder folders: `import_arcface_torch`.

arcface_torch saves ``backbone.state_dict()`` of an IResNet (``model.pt`` / ``backbone.pth``, or
``state_dict_backbone`` inside its ``checkpoint_gpu_*.pt``); our `lafs.models.iresnet.IResNet` has the same parameter
names, so the state dict loads strictly. The depth, widths, embedding size and input side are read from the tensors'
shapes, and the file is read with ``torch.load(weights_only=True)`` (`lafs.export.released.read_released_checkpoint`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import timm
import torch

from lafs.errors import DataError
from lafs.export.released import read_released_checkpoint
from lafs.export.weights import save_encoder
from lafs.landmarks.provenance import TEMPLATE
from lafs.models.iresnet import LAYERS, IResNet

_UNIT = re.compile(r"^layer([1-4])\.(\d+)\.")


def backbone_state(checkpoint: Any, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The backbone's tensors of an arcface_torch file, without DDP's ``module.`` prefix."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict_backbone"), dict):
        checkpoint = checkpoint["state_dict_backbone"]
    if (
        not isinstance(checkpoint, dict)
        or not checkpoint
        or not all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    ):
        raise DataError(f"{path}: not an arcface_torch backbone state dict (expected names -> tensors)")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def iresnet_args(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """The registered name and the constructor arguments whose shapes ``state`` has."""
    depths = [0, 0, 0, 0]
    for key in state:
        unit = _UNIT.match(key)
        if unit:
            stage, index = int(unit.group(1)) - 1, int(unit.group(2))
            depths[stage] = max(depths[stage], index + 1)
    missing = [key for key in ("conv1.weight", "fc.weight") if key not in state]
    if missing or 0 in depths:
        raise DataError(f"{path}: not an IResNet state dict (no {missing[0] if missing else 'layer1..4 units'})")
    widths = [int(state[f"layer{stage}.0.conv1.weight"].shape[0]) for stage in range(1, 5)]
    fc = state["fc.weight"]
    side = math.isqrt(int(fc.shape[1]) // widths[3])
    if side * side * widths[3] != fc.shape[1]:
        raise DataError(f"{path}: fc.weight {tuple(fc.shape)} does not follow a square feature map of {widths[3]}")
    names = [name for name, layers in LAYERS.items() if list(layers) == depths]
    if not names:
        known = ", ".join(f"{name} {list(layers)}" for name, layers in LAYERS.items())
        raise DataError(f"{path}: stage depths {depths} are none of {known}")
    return names[0], {"widths": widths, "num_features": int(fc.shape[0]), "img_size": side * 16}


def import_arcface_torch(
    checkpoint: str | os.PathLike[str], output: str | os.PathLike[str], overwrite: bool = False
) -> tuple[str, dict[str, Any]]:
    """Write the encoder folder ``output`` from an arcface_torch backbone file; returns (architecture, arguments)."""
    state = backbone_state(read_released_checkpoint(checkpoint), checkpoint)
    name, args = iresnet_args(state, checkpoint)
    model = timm.create_model(name, **args)
    assert isinstance(model, IResNet)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{checkpoint}: does not load into {name} ({str(exc).splitlines()[1].strip()})") from None
    source = {"imported_from": str(Path(checkpoint).resolve()), "layout": "arcface_torch backbone"}
    save_encoder(model.eval(), output, source, None, overwrite, [checkpoint], landmark_source=TEMPLATE)
    return name, args
