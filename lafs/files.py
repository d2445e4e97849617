"""Writing files and folders of outputs without losing anything that was there.

The policy every writer follows (`prepare_output_folder`, `prepare_output_files`, `output_folder`, `write_atomic`):
a writer never deletes or replaces what it did not write. An output folder must be missing, empty, or a previous
output of the same kind (recognised by the manifest ``.lafs-output.json`` the writer leaves in it, or, for folders
written before manifests existed, by ``config.json``'s ``"format"``); anything else is refused unless ``overwrite``,
and even then only the files the writer writes are replaced, each one atomically (a temporary file in the same
folder, then a rename), with the file mode the umask gives. Files a previous output of the same kind recorded and
the new one does not write are removed; nothing else is. An output file that exists is refused unless
``overwrite``. Paths are resolved first, so ``.`` and ``a/b/..`` name the folder they mean.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lafs.errors import DataError

MANIFEST = ".lafs-output.json"  # in an output folder: its kind and the files the writer wrote
_STAGING_PREFIX = ".lafs-staging-"  # inside an output folder while it is being written
WEIGHTS_FILES = ("model.safetensors", "config.json")  # what `save_weights_folder` writes


MAX_JSON_BYTES = 64 * 2**20  # far above any record we write (configs, reports, caches' meta)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in the file ``path``. Whatever does not parse as a small JSON file is a `ValueError` (as
    malformed JSON already is), so callers have one exception for it: a file that is not a regular one (a device,
    ``/dev/zero``) or larger than `MAX_JSON_BYTES`, and nesting too deep for Python's parser (a `RecursionError`).
    A file that cannot be read at all is an `OSError`."""
    path = Path(path)
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    if info.st_size > MAX_JSON_BYTES:
        raise ValueError(f"{info.st_size:,} bytes, more than any record this program writes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("nested too deep") from None


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` for a file being written (created by the caller, never by mkstemp)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` through a temporary file beside it and `os.replace`.

    Readers never see a half-written file and a crash leaves the previous one; the parent folder is created. The
    file's mode follows the umask (``open(..., "xb")``, not mkstemp's 0600).
    """
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise DataError(f"{path}: not a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with temporary.open("xb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give ``path`` the mode a plain ``open`` would have (0666 less the umask): for files a library created 0600."""
    os.chmod(path, 0o666 & ~_umask())


def output_kind(folder: Path) -> str | None:
    """The kind of output ``folder`` holds: its manifest's, else its config.json's ``"format"``, else None."""
    for name, key in ((MANIFEST, "kind"), ("config.json", "format")):
        try:
            record = read_json(folder / name)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get(key), str):
            return str(record[key])
    return None


def _recorded_files(folder: Path, known: Sequence[str]) -> list[str]:
    """The files a previous output of the kind wrote: its manifest's list, else (an older output) ``known``."""
    try:
        record = read_json(folder / MANIFEST)
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [name for name in known if (folder / name).is_file()]
    inside = [name for name in files if isinstance(name, str) and not Path(name).is_absolute()]
    return [name for name in inside if ".." not in Path(name).parts]


def _remove_recorded(folder: Path, name: str) -> None:
    """Remove the file ``name`` a previous output recorded, and the folders under ``folder`` that this empties."""
    stale = folder / name
    if not stale.parent.resolve().is_relative_to(folder.resolve()):
        return  # a sub-folder replaced by a link to elsewhere: what is there is not ours
    if stale.is_file() or stale.is_symlink():
        stale.unlink()
    parent = stale.parent
    while parent != folder:
        try:
            parent.rmdir()  # only an empty one
        except OSError:
            break
        parent = parent.parent


def _overlaps(output: Path, protected: Path) -> bool:
    return output == protected or output in protected.parents


def prepare_output_folder(
    path: str | os.PathLike[str], kind: str, overwrite: bool = False, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Check ``path`` may receive an output of ``kind`` and return it resolved; a refusal is a one-line `DataError`.

    Accepted: a missing folder, an empty one, or a previous output of ``kind`` (`output_kind`); any other folder only
    with ``overwrite``. Refused always: a path that is a file, and one that is or holds any of ``inputs``.
    """
    given = Path(path)
    folder = given.resolve()
    for source in inputs:
        if _overlaps(folder, Path(source).resolve()):
            raise DataError(f"{given}: is or holds the input {source}; choose a folder outside it")
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{given}: exists and is not a folder")
    if (
        folder.is_dir()
        and not overwrite
        and output_kind(folder) != kind
        and any(not p.name.startswith(_STAGING_PREFIX) for p in folder.iterdir())
    ):
        raise DataError(
            f"{given}: a folder that is not empty and not a {kind} output "
            "(pass --overwrite to write into it; only the files written are replaced)"
        )
    return folder


def claim_output_folder(
    path: str | os.PathLike[str], kind: str, overwrite: bool = False, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """`prepare_output_folder`, then create ``path`` and mark it an output of ``kind`` from the start.

    For long, resumable writers (the few-shot protocol) that fill the folder over hours: the same command accepts the
    folder again after an interruption, and the manifest lists no files, so nothing there is ever removed by it.
    """
    folder = prepare_output_folder(path, kind, overwrite, inputs)
    folder.mkdir(parents=True, exist_ok=True)
    if output_kind(folder) != kind:
        write_atomic(folder / MANIFEST, json.dumps({"kind": kind, "files": []}, indent=2) + "\n")
    return folder


def prepare_output_files(paths: Sequence[str | os.PathLike[str]], overwrite: bool = False) -> None:
    """Check the output files ``paths`` may be written: a folder is refused, an existing file unless ``overwrite``."""
    for path in map(Path, paths):
        if not path.name or path.name in (".", "..") or path.is_dir():
            raise DataError(f"{path}: is a folder; name the file to write")
        if path.exists() and not overwrite:
            raise DataError(f"{path}: already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike[str],
    kind: str,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    known: Sequence[str] = (),
) -> Iterator[Path]:
    """Yield a staging folder to write an output of ``kind`` into; on a clean exit its files move into ``path``.

    ``path`` is checked by `prepare_output_folder`. The staging folder lies inside ``path`` (same file system, never
    beside it), and every staged file replaces its namesake with one rename. Then files the previous output of
    ``kind`` recorded in its manifest (``known``: those an older, manifest-less one may have written) that were not
    written again are removed, and the manifest is written last. After an error the staging folder goes, and so
    does ``path`` if this call created it: what was there stays as it was.
    """
    folder = prepare_output_folder(path, kind, overwrite, inputs)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{_STAGING_PREFIX}*"):  # left by a writer that was killed: ours
        shutil.rmtree(stale, ignore_errors=True)
    previous = _recorded_files(folder, known) if output_kind(folder) == kind else []
    staging = folder / f"{_STAGING_PREFIX}{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        written = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        written = [name for name in written if name != MANIFEST]
        for name in written:
            target = folder / name
            if target.is_dir():
                raise DataError(f"{target}: is a folder; cannot write the file {name} there")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
        for name in sorted(set(previous) - set(written) - {MANIFEST}):
            _remove_recorded(folder, name)
        write_atomic(folder / MANIFEST, json.dumps({"kind": kind, "files": written}, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: Path, target: Path, owned: Callable[[Path], bool]) -> Path:
    """Move a fully written ``staging`` folder to ``target``, replacing a ``target`` this code wrote (``owned``).

    For outputs a writer keeps whole inside its own run directory (checkpoints). One rename cannot replace a folder,
    so the old ``target`` is moved aside first and deleted last: at every moment one whole copy exists. A ``target``
    that ``owned`` does not recognise is never removed: that is a `DataError`, and ``staging`` is left for the caller.
    """
    if target.exists() and not (target.is_dir() and owned(target)):
        raise DataError(f"{target}: exists and was not written by this program; not replacing it")
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.is_dir():
        shutil.rmtree(old)
    return target


def save_weights_folder(
    module: torch.nn.Module,
    folder: str | os.PathLike[str],
    config: dict[str, Any],
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Write ``folder`` holding model.safetensors (``module``'s state) and config.json (``config``).

    An output folder of kind ``config["format"]`` (`output_folder`): nothing else in ``folder`` is touched.
    """
    with output_folder(folder, config["format"], overwrite, inputs, WEIGHTS_FILES) as staging:
        write_weights(module, staging, config)
    return Path(folder)


def write_weights(module: torch.nn.Module, folder: Path, config: dict[str, Any]) -> None:
    """model.safetensors and config.json into ``folder`` (a staging folder), modes following the umask."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    follow_umask(folder / "model.safetensors")
    write_atomic(folder / "config.json", json.dumps(config, indent=2) + "\n")


def read_weights_folder(folder: str | os.PathLike[str], format_name: str, what: str) -> tuple[dict[str, Any], Path]:
    """(config.json as a dict, path of model.safetensors) of a `save_weights_folder` folder of ``format_name``.

    A missing or foreign folder is a one-line `DataError` naming ``what`` was expected.
    """
    folder = Path(folder)
    weights, config_path = folder / "model.safetensors", folder / "config.json"
    try:
        config = read_json(config_path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: not {what} ({config_path.name}: {exc})") from None
    if not isinstance(config, dict) or config.get("format") != format_name or not weights.is_file():
        raise DataError(f"{folder}: not a {format_name} folder (needs config.json and model.safetensors)")
    return config, weights
