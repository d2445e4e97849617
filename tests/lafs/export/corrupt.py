"""Ways to damage an exported encoder folder, shared by the library and command-line export tests."""

from __future__ import annotations

import json
from pathlib import Path


def architecture_changed(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "lafs_vit_base_p8_112"
    config["model_args"].update(embed_dim=768, depth=12, num_heads=12)
    (folder / "config.json").write_text(json.dumps(config))


def landmark_set_changed(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["landmark_set"] = "mediapipe196"
    (folder / "config.json").write_text(json.dumps(config))


def config_changed(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def weights_truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
