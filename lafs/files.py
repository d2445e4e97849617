"""Writing a file whole or not at all."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path


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
