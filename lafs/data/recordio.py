"""MXNet / insightface RecordIO (``.rec`` + ``.idx``) without MXNet: framing, image headers, a face dataset.

On disk (dmlc-core ``recordio.h``), a record is little-endian ``magic, lrec, data, zero pad to 4 bytes`` with
``lrec = cflag << 29 | length``. Where the magic occurs at a 4-aligned position of the data, the writer cuts it out
and splits the record there (cflag 1 first part, 2 middle, 3 last; 0 for a whole record); the reader puts it back.
The ``.idx`` file has one ``key<TAB>byte offset`` line per record. A record's data is an MXNet image record: header
``<IfQQ`` (flag, label, id, id2), ``flag`` float32 labels when flag > 0, then the encoded image.

Two layouts exist. insightface's (MS1MV3, Glint360K, WebFace): record 0 is a header whose labels
``(first_identity, end)`` say that images are keys ``1 .. first_identity - 1`` and keys ``first_identity .. end - 1``
are identity records, each with labels ``(start, stop)``: the image keys of that identity, and no image. im2rec's:
every record is an image whose label (or first label) is the class.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import secrets
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast

import numpy as np
from torch.utils.data import Dataset

from lafs.data.bad_records import BadRecordGuard
from lafs.data.images import decode_image
from lafs.data.index_cache import MappedArrays, cached_arrays
from lafs.errors import DataError

logger = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrec
_LENGTH_MASK = (1 << 29) - 1
_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes
_IDX_LINE = re.compile(r"-?\d{1,18}\t\d{1,18}")  # what fits int64
_REBUILD_HINT = "rebuild it with `python -m tools.make_rec --rebuild-index {rec}`"
# From this size on (about 50,000 records) the parsed index is cached on disk and memory-mapped (lafs.data.index_cache);
# smaller ones are parsed in a few milliseconds and leave no cache folder beside the data.
MAP_INDEX_FROM_BYTES = 1 << 20
ITEMS_VERSION = 1  # of FaceRecordDataset's cached keys, offsets and labels: raise it when their derivation changes


def _pad4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class RecordHeader:
    """MXNet's ``IRHeader``: ``label`` is a float when ``flag == 0``, else a tuple of ``flag`` floats."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack_record(header: RecordHeader, payload: bytes) -> bytes:
    """Header + extra labels + ``payload``. As in MXNet's ``pack``, ``flag`` follows from ``label``, not the field."""
    if isinstance(header.label, (int, float, np.number)):
        return _HEADER.pack(0, float(header.label), header.id, header.id2) + payload
    labels = np.asarray(header.label, dtype="<f4").ravel()
    return _HEADER.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes() + payload


def unpack_record(record: bytes) -> tuple[RecordHeader, bytes]:
    """Inverse of `pack_record`: (header, payload). Raises ValueError for a record too short for its header."""
    if len(record) < _HEADER.size:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {_HEADER.size}-byte image header")
    flag, label, id_, id2 = _HEADER.unpack_from(record)
    if flag == 0:
        return RecordHeader(0, label, id_, id2), record[_HEADER.size :]
    end = _HEADER.size + 4 * flag
    if len(record) < end:
        raise ValueError(f"header says {flag} labels but the record has only {len(record)} bytes")
    labels = tuple(np.frombuffer(record, dtype="<f4", count=flag, offset=_HEADER.size).tolist())
    return RecordHeader(flag, labels, id_, id2), record[end:]


def _integral_pair(header: RecordHeader) -> tuple[float, float] | None:
    """The first two labels of a record with at least two (flag >= 2), if both are whole numbers, else None:
    insightface's header (first identity record, end) and identity records (start, stop) carry such a pair."""
    label = header.label
    if header.flag < 2 or not isinstance(label, tuple) or not all(float(v).is_integer() for v in label[:2]):
        return None  # flag >= 2 means a tuple (unpack_record); the isinstance is for the type checker
    return label[0], label[1]


def _class_of(head: bytes) -> int:
    """Class from the first bytes of an image record: the label, or the first extra label when flag > 0."""
    if len(head) < _HEADER.size:
        raise ValueError(f"record of {len(head)} bytes is shorter than the {_HEADER.size}-byte image header")
    flag, value = _HEADER.unpack_from(head)[:2]
    if flag > 0:
        if len(head) < _HEADER.size + 4:
            raise ValueError(f"header says {flag} labels but the record ends before them")
        (value,) = struct.unpack_from("<f", head, _HEADER.size)
    if not (value >= 0 and float(value).is_integer()):
        raise ValueError(f"label {value} is not a class index")
    return int(value)


def _frame(record: bytes) -> bytes:
    """Record -> bytes on disk, exactly as dmlc ``RecordIOWriter::WriteRecord`` lays them out."""
    size = len(record)
    if size >= 1 << 29:
        raise ValueError(f"RecordIO records must be shorter than 2**29 bytes, got {size}")
    parts, start = [], 0
    pos = record.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= size & ~3:  # dmlc only looks at aligned words before the ragged tail
        if pos % 4 == 0:
            parts.append(_FRAME.pack(MAGIC, (1 if start == 0 else 2) << 29 | (pos - start)) + record[start:pos])
            start = pos + 4
            pos = record.find(_MAGIC_BYTES, start)
        else:
            pos = record.find(_MAGIC_BYTES, pos + 1)
    tail = record[start:] + bytes(_pad4(size) - size)  # earlier parts are whole words, so padding goes at the end
    parts.append(_FRAME.pack(MAGIC, (3 if start else 0) << 29 | (size - start)) + tail)
    return b"".join(parts)


def _frame_at(fh: BinaryIO, pos: int, size: int, path: Path) -> tuple[int, int]:
    """(cflag, length) of the part at ``pos``, checking the magic and that the part fits in the file."""
    if pos + 8 > size:
        raise DataError(f"{path}: truncated: a record starts at byte {pos} but the file ends at {size}")
    fh.seek(pos)
    magic, lrec = _FRAME.unpack(fh.read(8))
    if magic != MAGIC:
        raise DataError(f"{path}: wrong magic {magic:#010x} at byte {pos} (not a RecordIO record boundary)")
    length = lrec & _LENGTH_MASK
    if pos + 8 + _pad4(length) > size:
        raise DataError(f"{path}: truncated: the record part at byte {pos} runs past the end of the file ({size})")
    return lrec >> 29, length


def _read_record(fh: BinaryIO, pos: int, size: int, path: Path, limit: int | None = None) -> tuple[bytes, int]:
    """(record, offset after it) for the record at ``pos``; with ``limit``, only its first ``limit`` bytes."""
    out, first = bytearray(), True
    while True:
        cflag, length = _frame_at(fh, pos, size, path)
        if cflag not in ((0, 1) if first else (2, 3)):
            raise DataError(f"{path}: continuation flag {cflag} out of sequence at byte {pos}")
        want = length if limit is None else max(0, min(length, limit - len(out)))
        data = fh.read(want)
        if len(data) != want:
            raise DataError(f"{path}: truncated: the file ended while reading the record part at byte {pos}")
        pos += 8 + _pad4(length)
        if first and cflag == 0:  # the usual whole record: no copy
            return data, pos
        out += data
        if cflag in (0, 3):
            return bytes(out[:limit]), pos
        out += _MAGIC_BYTES  # the magic the writer cut out between two parts
        first = False


def _walk(path: Path, limit: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, first ``limit`` bytes) of every record, walking the file from its start."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        pos = 0
        while pos < size:
            head, end = _read_record(fh, pos, size, path, limit)
            yield pos, head
            pos = end


def scan_offsets(rec_path: str | os.PathLike[str]) -> list[int]:
    """Byte offset of every record of a ``.rec``, in file order."""
    return [offset for offset, _ in _walk(_existing(Path(rec_path)))]


def write_index(idx_path: str | os.PathLike[str], keys_offsets: Iterable[tuple[int, int]]) -> None:
    """Write an ``.idx`` as MXIndexedRecordIO does (``key\\toffset\\n`` per record), replacing it atomically."""
    with _AtomicFile(Path(idx_path)) as fh:
        for key, offset in keys_offsets:
            fh.write(f"{int(key)}\t{int(offset)}\n".encode())


def rebuild_index(rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> Path:
    """Recreate a lost ``.idx`` by walking the ``.rec``; returns its path.

    im2rec and the insightface tools write each record under the key stored as its header ``id`` (record 0 of the
    insightface layout is not the first in the file), so those ids are the keys when every record has a distinct
    one; otherwise keys are 0 .. n-1 in file order.
    """
    rec = _existing(Path(rec_path))
    offsets: list[int] = []
    ids: list[int | None] = []
    for offset, head in _walk(rec, _HEADER.size):
        offsets.append(offset)
        ids.append(_HEADER.unpack(head)[2] if len(head) == _HEADER.size else None)
    distinct = None not in ids and len(set(ids)) == len(ids)
    keys = cast("list[int]", ids) if distinct else list(range(len(offsets)))  # the cast: no None among them
    target = Path(idx_path) if idx_path is not None else rec.with_suffix(".idx")
    write_index(target, zip(keys, offsets, strict=True))
    return target


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    return path


class _AtomicFile:
    """Binary file written under a temporary name next to ``path``; renamed onto it only by a clean exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Not mkstemp: its 0600 mode would survive the rename; open(..., "xb") honours the umask like MXNet does.
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        self.fh: BinaryIO = self.tmp.open("xb")

    def __enter__(self) -> BinaryIO:
        return self.fh

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class RecordIOWriter:
    """Write records and their ``.idx`` byte for byte like MXNet's ``MXIndexedRecordIO(..., "w")``.

    Both files are written under temporary names next to the targets and renamed into place by `close`; an
    exception inside a ``with`` block removes them instead, so a failed run never leaves a complete-looking ``.rec``.
    The ``.rec`` is renamed first: if the process dies between the two renames, `rebuild_index` recovers the index.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._rec = _AtomicFile(self.rec_path)
        try:
            self._idx = _AtomicFile(self.idx_path)
        except BaseException:
            self._rec.__exit__(OSError)
            raise
        self._offset = 0
        self._keys: set[int] = set()
        self._open = True

    def write(self, key: int, record: bytes) -> None:
        """Append ``record`` (e.g. from `pack_record`) under the integer ``key``."""
        if not self._open:
            raise ValueError(f"{self.rec_path}: writer is closed")
        key = operator.index(key)
        if key in self._keys:
            raise ValueError(f"{self.rec_path}: key {key} written twice")
        data = _frame(bytes(record))
        self._rec.fh.write(data)
        self._idx.fh.write(f"{key}\t{self._offset}\n".encode())
        self._keys.add(key)
        self._offset += len(data)

    def close(self) -> None:
        """Finish both files and move them into place."""
        self._finish(None)

    def _finish(self, exc_type: type[BaseException] | None) -> None:
        if self._open:
            self._open = False
            self._rec.__exit__(exc_type)
            self._idx.__exit__(exc_type)

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish(exc_type)


class RecordIOReader:
    """Random access to a ``.rec`` through its ``.idx``, checked at open.

    Each process opens its own file handle on first use (the pid is stored with it), and pickling drops the handle,
    so a reader can be handed to DataLoader workers, forked or spawned. One reader is not for several threads.

    ``map_index``: parse the ``.idx`` once into a cache folder and memory-map it (`lafs.data.index_cache`), so every
    process shares one copy of ~32 bytes per record and opens in milliseconds; None (default) maps an index of
    `MAP_INDEX_FROM_BYTES` or more, False parses it into this process's memory.
    """

    def __init__(
        self,
        rec_path: str | os.PathLike[str],
        idx_path: str | os.PathLike[str] | None = None,
        map_index: bool | None = None,
    ) -> None:
        self.rec_path = _existing(Path(rec_path))
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.size = self.rec_path.stat().st_size
        self._fh: BinaryIO | None = None
        self._pid: int | None = None
        if not self.idx_path.is_file():
            raise DataError(f"{self.idx_path}: index file missing; {_REBUILD_HINT.format(rec=self.rec_path)}")
        if map_index is None:
            map_index = self.idx_path.stat().st_size >= MAP_INDEX_FROM_BYTES
        self.index = (
            cached_arrays([self.rec_path, self.idx_path], "reader", self._build_index)
            if map_index
            else MappedArrays(*self._build_index())
        )

    def _build_index(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Keys and offsets in ``.idx`` order, and both sorted by key for lookups (numpy, not a dict: compact)."""
        keys, offsets = self._parse_index()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        duplicate = np.flatnonzero(np.diff(sorted_keys) == 0)
        if duplicate.size:
            raise DataError(f"{self.idx_path}: key {sorted_keys[duplicate[0]]} appears twice")
        # The first record and the one reaching furthest show a wrong file, a truncated one or a stale index.
        self.read_at(int(offsets.min()))
        self.read_at(int(offsets.max()))
        return {"keys": keys, "offsets": offsets, "sorted_keys": sorted_keys, "sorted_offsets": offsets[order]}, {}

    def _parse_index(self) -> tuple[np.ndarray, np.ndarray]:
        try:  # numpy's C parser: a second for 5 M lines, where a Python loop takes ten
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an empty index is reported below, not warned about
                table = np.loadtxt(
                    self.idx_path, dtype=np.int64, delimiter="\t", comments=None, ndmin=2, encoding="ascii"
                )
        except (ValueError, UnicodeDecodeError):
            raise self._bad_line() from None
        if table.size == 0:
            raise DataError(f"{self.idx_path}: index has no entries")
        if table.shape[1] != 2 or np.any(table[:, 1] < 0):
            raise self._bad_line()
        keys, offsets = table[:, 0].copy(), table[:, 1].copy()
        past = np.flatnonzero(offsets + 8 > self.size)
        if past.size:
            raise DataError(
                f"{self.idx_path}: key {keys[past[0]]} points to byte {offsets[past[0]]}, past the end of "
                f"{self.rec_path} ({self.size} bytes)"
            )
        return keys, offsets

    def _bad_line(self) -> DataError:
        """The error naming the first line that is not ``key<TAB>offset``."""
        for lineno, line in enumerate(self.idx_path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
            if line.strip() and not _IDX_LINE.fullmatch(line.strip()):
                return DataError(f"{self.idx_path}: line {lineno} is not `key<TAB>offset`: {line.strip()[:60]!r}")
        return DataError(f"{self.idx_path}: not a list of `key<TAB>offset` lines")

    @property
    def keys(self) -> list[int]:
        """Keys in ``.idx`` order."""
        return self._keys.tolist()

    # The arrays are read through the index each time, never kept as attributes: pickling an attribute would copy a
    # mapped array's data to every spawned worker, where `MappedArrays` sends only its folder.
    @property
    def _keys(self) -> np.ndarray:
        return self.index["keys"]

    @property
    def _offsets(self) -> np.ndarray:
        return self.index["offsets"]

    def __len__(self) -> int:
        return len(self._keys)

    def _offsets_of(self, keys: np.ndarray) -> np.ndarray:
        """Byte offsets of int64 ``keys``, looked up together (KeyError for the first one missing)."""
        sorted_keys = self.index["sorted_keys"]
        i = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        missing = np.flatnonzero(sorted_keys[i] != keys)
        if missing.size:
            raise KeyError(int(keys[missing[0]]))
        return np.asarray(self.index["sorted_offsets"][i])

    def _file(self) -> BinaryIO:
        # A handle inherited through fork shares its file position with the parent: open our own instead.
        if self._fh is None or self._pid != os.getpid():
            if self._fh is not None:
                self._fh.close()
            self._fh = self.rec_path.open("rb")
            self._pid = os.getpid()
        return self._fh

    def read(self, key: int) -> bytes:
        """The record stored under ``key`` (KeyError if the index has no such key)."""
        return self.read_at(int(self._offsets_of(np.asarray([operator.index(key)]))[0]))[0]

    def _head_at(self, offset: int, limit: int) -> bytes:
        """The first ``limit`` bytes of a record, without reading the rest (an image's header, not its pixels)."""
        return _read_record(self._file(), offset, self.size, self.rec_path, limit)[0]

    def read_at(self, offset: int) -> tuple[bytes, int]:
        """(record at byte ``offset``, offset of the next record), for sequential scans."""
        return _read_record(self._file(), offset, self.size, self.rec_path)

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = self._pid = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fh": None, "_pid": None}


@dataclass(frozen=True)
class _Ranges:
    first: int  # first identity key; images are keys 1 .. first - 1
    array: np.ndarray  # (num_identities, 2) int64 [start, stop) image keys of each identity
    tiles: bool  # the ranges cover the image keys exactly, in order


class FaceRecordDataset(Dataset):
    """Face images and class labels from an insightface or im2rec ``.rec`` (+ ``.idx`` beside it).

    Item ``i``: ``{"image": H x W x 3 uint8 RGB, "label": int, "index": i}``. ``bgr=True`` declares that the encoded
    images hold BGR pixel order (MS1MV3's do), so channels are swapped once more than by default.

    Labels are collected at open without decoding images: from the identity records in the insightface layout,
    otherwise from each image's header; a record whose header label does not read is left out and counts as bad. A
    record 0 that claims the insightface layout but does not match the records is a DataError. A record that fails
    to read or decode during training (a JPEG that decodes only with a libjpeg warning included) is replaced by the
    next good one (``i + 1``, ``i + 2``, ... wrapping), which keeps its own label and index, so no image ever gets
    another's label. Each bad key is logged once and counted in `bad_records` (per process: each DataLoader worker
    counts what it reads); past ``max_bad_fraction`` of the data set's records, DataError (see `BadRecordGuard`).

    Where the reader maps its index (``map_index``, see `RecordIOReader`), the keys, offsets and labels of the items
    are cached beside it and mapped too: opening ten million records takes milliseconds after the first time, and
    memory per process and worker does not grow with the number of records.
    """

    def __init__(
        self,
        rec_path: str | os.PathLike[str],
        bgr: bool = False,
        image_size: int | None = None,
        max_bad_fraction: float = 0.01,
        map_index: bool | None = None,
    ) -> None:
        self.rec_path = Path(rec_path)
        self.bgr, self.image_size = bgr, image_size
        self._reader = RecordIOReader(self.rec_path, map_index=map_index)
        stamp = self._reader.index.stamp  # the items must come from the same files as the index they are read with
        items = (
            MappedArrays(*self._build_items())
            if stamp is None  # a small index, parsed in memory
            else cached_arrays([self.rec_path, self._reader.idx_path], "faces", self._build_items, ITEMS_VERSION, stamp)
        )
        self.items = items  # its arrays are read through it, as the reader's are
        self.layout, self.num_classes, skipped = (items.info[key] for key in ("layout", "num_classes", "skipped"))
        if skipped:
            logger.warning("%s: %d records without a readable label are left out", self.rec_path, skipped)
        self.guard = BadRecordGuard(str(self.rec_path), len(self._keys), max_bad_fraction, skipped)

    def _build_items(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Key, byte offset and label of every image (int64 each), and the layout, class count and records left out."""
        ranges = self._identity_ranges()
        keys = self._reader._keys.copy() if ranges is None else np.arange(1, ranges.first, dtype=np.int64)
        if not len(keys):
            raise DataError(f"{self.rec_path}: no image records")
        offsets = self._reader._offsets_of(keys)
        labels = self._identity_labels(ranges.array, offsets) if ranges is not None and ranges.tiles else None
        skipped = 0
        if labels is None:
            labels, readable = self._header_labels(keys, offsets)
            skipped = len(labels) - int(readable.sum())
            if skipped:  # records whose label does not read are left out, and count as bad ones
                keys, offsets, labels = keys[readable], offsets[readable], labels[readable]
        if not len(keys):
            raise DataError(f"{self.rec_path}: no record has a readable label")
        num_classes = max(0 if ranges is None else len(ranges.array), int(labels.max()) + 1)
        info = {"layout": "flat" if ranges is None else "classic", "num_classes": num_classes, "skipped": skipped}
        return {"keys": keys, "offsets": offsets, "labels": labels}, info

    def _identity_ranges(self) -> _Ranges | None:
        """Identity ranges if record 0 is an insightface header, None for the im2rec layout.

        Record 0 without an image and with a (first, end) pair claims the insightface layout (an im2rec record 0 is
        an image); if the records do not bear that claim out, DataError: never another layout, with wrong labels.
        """
        reader = self._reader
        try:
            header, image = unpack_record(reader.read(0))
        except (KeyError, ValueError, DataError):
            return None
        if image or header.flag < 2:  # an im2rec image (with or without a label pair): the flat layout
            return None
        pair = _integral_pair(header)
        if pair is None:  # no image but labels: a header whose numbers are broken (NaN, fractions)
            raise DataError(f"{self.rec_path}: record 0 is an insightface header, but its labels {header.label} are "
                            "no pair of record keys")  # fmt: skip
        first, end = int(pair[0]), int(pair[1])
        claim = f"record 0 (an insightface header) says images 1 .. {first - 1}, identities {first} .. {end - 1}"
        if not 1 <= first < end:
            raise DataError(f"{self.rec_path}: record 0 is an insightface header, but ({first}, {end}) is no key range")
        if end - 1 > len(reader._keys):  # checked before anything of that size is allocated
            raise DataError(f"{self.rec_path}: {claim}, but the index holds only {len(reader._keys)} records")
        if np.count_nonzero((reader._keys >= 1) & (reader._keys < end)) != end - 1:  # keys are unique
            missing = np.setdiff1d(np.arange(1, end), reader._keys)
            raise DataError(f"{self.rec_path}: {claim}, but the index has no key {missing[0]} ({missing.size} missing)")
        offsets = reader._offsets_of(np.arange(first - 1, end)).tolist()
        if first > 1 and self._identity_record(offsets[0]) is not None:
            raise DataError(f"{self.rec_path}: {claim}, but record {first - 1} is an identity record, not an image")
        ranges = []
        for key, offset in enumerate(offsets[1:], first):
            pair = self._identity_record(offset)
            if pair is None:
                raise DataError(f"{self.rec_path}: {claim}, but record {key} is no identity record (start, stop)")
            ranges.append(pair)
        array = np.asarray(ranges, dtype=np.int64)
        starts, stops = array[:, 0], array[:, 1]
        if starts.min() < 1 or stops.max() > first or np.any(stops < starts) or np.any(starts[1:] < stops[:-1]):
            raise DataError(f"{self.rec_path}: {claim}, but their images are no ordered ranges of 1 .. {first - 1}")
        tiles = bool(starts[0] == 1 and stops[-1] == first and np.all(starts[1:] == stops[:-1]))
        return _Ranges(first, array, tiles)

    def _identity_record(self, offset: int) -> tuple[float, float] | None:
        """(start, stop) if the record at ``offset`` is an identity record (such a pair, no image), else None."""
        try:
            identity, rest = unpack_record(self._reader.read_at(offset)[0])
        except (ValueError, DataError):
            return None
        pair = _integral_pair(identity)
        return None if rest else pair

    def _identity_labels(self, ranges: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
        """Identity ordinal per image, or None if sampled image headers disagree (they win, as in insightface)."""
        labels = np.repeat(np.arange(len(ranges), dtype=np.int64), ranges[:, 1] - ranges[:, 0])
        firsts = np.unique(ranges[ranges[:, 1] > ranges[:, 0], 0] - 1)  # item index of each identity's first image
        for i in firsts[np.linspace(0, len(firsts) - 1, min(16, len(firsts))).astype(int)].tolist():
            try:
                agrees = _class_of(self._reader._head_at(int(offsets[i]), _HEADER.size + 4)) == labels[i]
            except (ValueError, DataError):
                agrees = False
            if not agrees:
                logger.warning("%s: image headers disagree with the identity records; using the headers", self.rec_path)
                return None
        return labels

    def _header_labels(self, keys: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class of every image from its header, which of them read): 36 bytes read per record, not the image.

        A record whose header does not read or holds no class is logged here and marked unreadable."""
        labels = np.zeros(len(keys), dtype=np.int64)
        readable = np.ones(len(keys), dtype=bool)
        for i, offset in enumerate(offsets.tolist()):
            try:
                labels[i] = _class_of(self._reader._head_at(offset, _HEADER.size + 4))
            except (ValueError, DataError) as exc:
                readable[i] = False
                logger.warning("%s: skipping record %d: no label (%s)", self.rec_path, keys[i], exc)
        return labels, readable

    @property
    def labels(self) -> np.ndarray:
        """Class of every item, int64 (N,)."""
        return self.items["labels"]

    @property
    def _keys(self) -> np.ndarray:
        return self.items["keys"]

    @property
    def _offsets(self) -> np.ndarray:
        return self.items["offsets"]

    @property
    def bad_records(self) -> int:
        """Distinct bad records met so far in this process, those left out at open included."""
        return self.guard.bad

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n, index = len(self._keys), operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} records")
        return self.guard.read(index % n, self.load)

    def load(self, i: int) -> dict[str, Any]:
        """Exactly item ``i``, no substitute: an unreadable, undecodable or mislabelled record is a `DataError`."""
        try:
            record = self._reader.read_at(int(self._offsets[i]))[0]
            label = _class_of(record)
            payload = unpack_record(record)[1]
        except ValueError as exc:
            raise DataError(f"record {int(self._keys[i])}: {exc}") from None
        if label != self.labels[i]:
            raise DataError(f"record {int(self._keys[i])}: header label {label} != indexed label {self.labels[i]}")
        try:
            image = decode_image(payload, self.bgr, self.image_size, strict=True)
        except DataError as exc:
            raise DataError(f"record {int(self._keys[i])}: {exc}") from None
        return {"image": image, "label": label, "index": i}


def write_face_rec(
    rec_path: str | os.PathLike[str], items: Iterable[tuple[bytes, int]], num_classes: int | None = None
) -> tuple[int, int]:
    """Write encoded images and their classes as an insightface-layout ``.rec`` + ``.idx``; returns (images, classes).

    ``items`` may be a generator (nothing is held in memory) and must come grouped by class: labels non-decreasing.
    Images become keys ``1 .. N``, then one identity record per class ``0 .. num_classes - 1`` (default: the largest
    label + 1; a class with no images gets an empty range, so labels keep their values), then record 0, written last
    as insightface's face2rec2 does because N is known only at the end. Every header ``id`` is its key, so
    `rebuild_index` recovers the index. As with `RecordIOWriter`, an exception (also one raised by ``items``)
    leaves no file behind.
    """
    with RecordIOWriter(rec_path) as writer:
        counts: list[int] = []
        for key, (payload, label) in enumerate(items, 1):
            label = operator.index(label)
            if label < 0:
                raise ValueError(f"{rec_path}: negative label {label}")
            if label < len(counts) - 1:
                raise ValueError(f"{rec_path}: labels must come grouped by class, got {label} after {len(counts) - 1}")
            counts += [0] * (label + 1 - len(counts))
            counts[label] += 1
            writer.write(key, pack_record(RecordHeader(0, float(label), key, 0), payload))
        if not counts:
            raise ValueError(f"{rec_path}: no images to write")
        if num_classes is not None:
            if num_classes < len(counts):
                raise ValueError(f"{rec_path}: label {len(counts) - 1} >= num_classes {num_classes}")
            counts += [0] * (num_classes - len(counts))
        first = sum(counts) + 1
        start = 1
        for offset, count in enumerate(counts):
            identity = RecordHeader(2, (float(start), float(start + count)), first + offset, 0)
            writer.write(first + offset, pack_record(identity, b""))
            start += count
        writer.write(0, pack_record(RecordHeader(2, (float(first), float(first + len(counts))), 0, 0), b""))
    return first - 1, len(counts)
