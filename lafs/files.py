"""Writing a file, or a folder of weights, whole or not at all."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lafs.errors import DataError


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` through a temporary file beside it and `os.replace`.

    Readers never see a half-written file and a crash leaves the previous one; the parent folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("xb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def replace_folder(staging: Path, target: Path) -> Path:
    """Move a fully written ``staging`` folder to ``target``, replacing what is there.

    One rename cannot replace a folder, so the old ``target`` is moved aside first and deleted last: at every moment
    one whole copy exists.
    """
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()
    return target


def save_weights_folder(module: torch.nn.Module, folder: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Write ``folder`` holding model.safetensors (``module``'s state) and config.json, whole or not at all."""
    folder = Path(folder)
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(temporary / "model.safetensors"), metadata={"format": "pt"})
    (temporary / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return replace_folder(temporary, folder)


def read_weights_folder(folder: str | os.PathLike[str], format_name: str, what: str) -> tuple[dict[str, Any], Path]:
    """(config.json as a dict, path of model.safetensors) of a `save_weights_folder` folder of ``format_name``.

    A missing or foreign folder is a one-line `DataError` naming ``what`` was expected.
    """
    folder = Path(folder)
    weights, config_path = folder / "model.safetensors", folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: not {what} ({config_path.name}: {exc})") from None
    if not isinstance(config, dict) or config.get("format") != format_name or not weights.is_file():
        raise DataError(f"{folder}: not a {format_name} folder (needs config.json and model.safetensors)")
    return config, weights
