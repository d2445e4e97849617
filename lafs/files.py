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
