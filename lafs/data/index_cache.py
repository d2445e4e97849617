"""Arrays derived from a large data file, computed once and memory-mapped by every process that opens the file.

A ``.rec`` of ten million faces has an index of 160 MB as int64 numbers; parsed into each training process and
DataLoader worker, that is gigabytes per node, and seconds of parsing at every start. Instead the derived arrays
(keys, byte offsets, labels) are saved once as ``.npy`` files and every process maps them: the pages are shared
through the operating system's file cache, so memory per process stays flat in the number of records.

A cache is a folder ``<kind><version>-<fingerprint>`` holding one ``<name>.npy`` per array and ``meta.json``
(format, the arrays' shapes and dtypes, and what the builder reported). The fingerprint covers the source files'
sizes, inodes, times and first and last MiB (`fingerprint`), so a rewritten ``.rec`` or ``.idx`` gets a new
folder. A folder is built under a temporary name and renamed into place whole, so processes that open the same data
at once (several ranks, several nodes on a shared file system) never see half a cache; the loser of the rename maps
the winner's.

Where: a ``<file>.lafs-index`` folder beside the first source; where that is not writable (a read-only dataset
mount), ``$XDG_CACHE_HOME/lafs/index`` (``~/.cache`` by default); where neither is, the arrays stay in memory with a
warning. Caches of an earlier version of the data are named in a warning, never removed: a run started before the
change may still use them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lafs.errors import DataError
from lafs.files import read_json

logger = logging.getLogger(__name__)

CACHE_FORMAT = "lafs-index-cache"
CACHE_VERSION = 1
META_FILE = "meta.json"
_SAMPLE_BYTES = 1 << 20  # of each source's head and tail in the fingerprint
_FOLDER = re.compile(r"(?P<kind>[a-z]+)[0-9]+-[0-9a-f]{16}")  # <kind><version>-<fingerprint>

Builder = Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]


def fingerprint(sources: Sequence[Path]) -> str:
    """16 hex digits that change when any source file changes.

    Size, inode, modification and change times, and the first and last MiB: ``cp -p`` or ``rsync -a`` keep the
    modification time, but no tool can set the change time, and the sampled bytes catch a rewrite within one tick of
    a coarse file-system clock. The device is left out: NFS clients number it differently for the same file.
    """
    digest = hashlib.sha256(f"{CACHE_FORMAT} {CACHE_VERSION}".encode())
    for path in sources:
        stat = path.stat()
        digest.update(f"{path.name} {stat.st_size} {stat.st_ino} {stat.st_mtime_ns} {stat.st_ctime_ns}".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(_SAMPLE_BYTES))
            if stat.st_size > _SAMPLE_BYTES:
                fh.seek(max(_SAMPLE_BYTES, stat.st_size - _SAMPLE_BYTES))
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def cache_roots(source: Path) -> list[Path]:
    """Where a cache of ``source`` may live, in order of preference: beside it, then the user's cache folder."""
    source = source.absolute()  # a mapped cache pickles as its folder: a worker in another cwd must find it
    roots = [source.with_name(f"{source.name}.lafs-index")]
    try:
        user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").absolute()
    except RuntimeError:  # no HOME and no passwd entry (some containers): only the place beside the data
        return roots
    where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    return [*roots, user / "lafs" / "index" / f"{source.name}-{where}"]


class MappedArrays(Mapping[str, np.ndarray]):
    """Named read-only arrays, memory-mapped from a cache folder (or held in memory when no cache could be written).

    Pickling a mapped one sends only its folder, and the receiving process maps the files again: a spawned
    DataLoader worker gets no copy of the data. ``stamp`` is the fingerprint of the sources they were built from
    (None when they were built without a cache), for arrays derived from these and the same sources.
    """

    def __init__(
        self, arrays: dict[str, np.ndarray], info: dict[str, Any], folder: Path | None = None, stamp: str | None = None
    ) -> None:
        self.arrays, self.info, self.folder, self.stamp = arrays, info, folder, stamp  # info: what the builder said

    @classmethod
    def open(cls, folder: Path) -> MappedArrays:
        """Map the cache in ``folder``; one whose files do not match its ``meta.json`` is a one-line `DataError`."""
        try:
            meta = read_json(folder / META_FILE)
            if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
                raise ValueError(f"not a version {CACHE_VERSION} {CACHE_FORMAT}")
            arrays = {}
            for name, (shape, dtype) in meta["arrays"].items():
                array = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                if list(array.shape) != shape or array.dtype.str != dtype:
                    raise ValueError(
                        f"{name}.npy holds {array.dtype.str} {list(array.shape)}, meta says {dtype} {shape}"
                    )
                arrays[name] = array
            info, stamp = meta["info"], meta["stamp"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{folder}: damaged index cache ({exc}); delete that folder to rebuild it") from None
        return cls(arrays, info, folder, stamp)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __iter__(self) -> Any:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.folder is None:
            return (MappedArrays, (self.arrays, self.info, None, self.stamp))
        return (MappedArrays.open, (self.folder,))


def cached_arrays(
    sources: Sequence[Path],
    kind: str,
    build: Builder,
    version: int = 1,
    stamp: str | None = None,
    roots: Sequence[Path] | None = None,
) -> MappedArrays:
    """The arrays ``build()`` derives from ``sources``, memory-mapped from a cache (built on first use).

    ``build`` returns (named arrays, a JSON-able dict of facts about them), and may raise (a `DataError` for a bad
    source is passed on, and nothing is cached). ``kind`` (lower-case letters) tells different arrays of the same
    sources apart; raising ``version`` retires caches built by an earlier ``build``. ``stamp``: the sources'
    fingerprint as already taken for other arrays they came with (`MappedArrays.stamp`), so that these match them
    even if the files change meanwhile. ``roots`` overrides `cache_roots` of the first source.
    """
    stamp = fingerprint(sources) if stamp is None else stamp
    name = f"{kind}{version}-{stamp}"
    roots = cache_roots(sources[0]) if roots is None else roots
    for root in roots:
        if _is_file(root / name / META_FILE):
            return MappedArrays.open(root / name)
    arrays, info = build()
    if fingerprint(sources) != stamp:  # what was built may mix the old and the new file: never cache it
        raise DataError(f"{sources[0]}: changed while it was being indexed; open it again")
    for root in roots:
        try:
            folder = _publish(root, name, arrays, info, stamp)
        except OSError as exc:
            logger.debug("index cache not written in %s: %s", root, exc)
            continue
        _mention_older(root, kind, keep=name)
        return MappedArrays.open(folder)
    logger.warning(
        "warning: %s: no writable place for its index cache (tried %s); holding the index in memory, once per process",
        sources[0], ", ".join(str(root) for root in roots),
    )  # fmt: skip
    return MappedArrays(arrays, info, None, stamp)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a folder another user made unreadable: not a cache of ours, try the next place
        return False


def _publish(root: Path, name: str, arrays: dict[str, np.ndarray], info: dict[str, Any], stamp: str) -> Path:
    """Write the cache under a temporary name in ``root`` and rename it to ``root/name`` (or keep one that won)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        shapes = {key: [list(array.shape), np.asarray(array).dtype.str] for key, array in arrays.items()}
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "stamp": stamp, "arrays": shapes, "info": info}
        files = {f"{key}.npy": array for key, array in arrays.items()}
        for file_name, content in [*files.items(), (META_FILE, meta)]:
            with (tmp / file_name).open("xb") as fh:
                if isinstance(content, dict):
                    fh.write((json.dumps(content, indent=1) + "\n").encode())
                else:
                    np.save(fh, np.ascontiguousarray(content), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())  # the folder's rename below must not land before its contents
        _fsync_folder(tmp)
        target = root / name
        try:
            tmp.rename(target)
        except OSError:
            if not _is_file(target / META_FILE):
                raise
            # Another process published the same cache first: identical contents, keep theirs.
        _fsync_folder(root)
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _mention_older(root: Path, kind: str, keep: str) -> None:
    """Name the caches of ``kind`` built from earlier versions of the sources, which nothing will read again.

    They are not removed: a run started before the data changed may still map them, or send them to new workers.
    """
    older = [folder.name for folder in root.iterdir() if folder.name != keep and _kind_of(folder.name) == kind]
    if older:
        logger.warning(
            "warning: %s holds index caches of an earlier version of the data (%s); delete them once no run "
            "started before the change is still going", root, ", ".join(sorted(older)),
        )  # fmt: skip


def _kind_of(folder_name: str) -> str | None:
    match = _FOLDER.fullmatch(folder_name)
    return None if match is None else match["kind"]
