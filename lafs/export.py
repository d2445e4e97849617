"""Stand-alone encoder folders: ``model.safetensors`` + ``config.json``, loadable with `timm.create_model`.

    folder/model.safetensors   the encoder's state dict (no head, no training state)
    folder/config.json         architecture, the arguments to rebuild it, input size, normalisation, landmark set
                               and template, embedding size, and where the weights came from

`load_encoder(folder)` and ``timm.create_model(architecture, pretrained=True,
pretrained_cfg_overlay={"file": folder/"model.safetensors"}, **model_args)`` (after ``import lafs``) give the same
model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file

from lafs.errors import DataError
from lafs.models.vit import LandmarkViT

EXPORT_FORMAT = "lafs-encoder"
EXPORT_VERSION = 1


def encoder_config(model: LandmarkViT, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json record for ``model``."""
    cfg = model.pretrained_cfg
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "architecture": cfg["architecture"],
        "model_args": {
            "landmark_set": model.landmark_set,
            "embed_dim": model.embed_dim,
            "depth": len(model.blocks),
            "num_heads": model.blocks[0].attn.num_heads,
        },
        "input_size": list(cfg["input_size"]),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "landmark_set": model.landmark_set,
        "template": model.template.tolist(),
        "patch_size": model.patch_embed.patch_size[0],
        "num_features": model.num_features,
        "source": source or {},
    }


def save_encoder(model: LandmarkViT, folder: str | os.PathLike[str], source: dict[str, Any] | None = None) -> Path:
    """Write ``folder`` whole or not at all (built beside it, then renamed into place)."""
    folder = Path(folder)
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(temporary / "model.safetensors"), metadata={"format": "pt"})
    (temporary / "config.json").write_text(json.dumps(encoder_config(model, source), indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(temporary, folder)
    return folder


def load_encoder(folder: str | os.PathLike[str]) -> LandmarkViT:
    """Rebuild an exported encoder through timm; a missing or mismatched folder is a one-line `DataError`."""
    folder = Path(folder)
    weights, config_path = folder / "model.safetensors", folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: not an exported encoder ({config_path.name}: {exc})") from None
    if config.get("format") != EXPORT_FORMAT or not weights.is_file():
        raise DataError(f"{folder}: not a {EXPORT_FORMAT} folder (needs config.json and model.safetensors)")
    try:
        return timm.create_model(
            config["architecture"],
            pretrained=True,
            pretrained_cfg_overlay={"file": str(weights)},
            **config["model_args"],
        )
    except (RuntimeError, KeyError) as exc:
        raise DataError(f"{folder}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None


def load_any_encoder(path: str | os.PathLike[str]) -> torch.nn.Module:
    """An encoder from a run directory (its ``encoder/``), an exported encoder folder, or an ONNX file.

    The result maps normalised images (batch, 3, 112, 112) to embeddings (batch, dim).
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return load_onnx_encoder(path)
    if (path / "config.json").is_file():
        return load_encoder(path)
    if (path / "encoder" / "config.json").is_file():
        return load_encoder(path / "encoder")
    raise DataError(f"{path}: not a run directory, an exported encoder folder or an .onnx file")


def load_onnx_encoder(path: Path) -> torch.nn.Module:
    """ONNX encoder as a module (filled in with the ONNX export)."""
    raise DataError(f"{path}: ONNX encoders cannot be loaded yet")
