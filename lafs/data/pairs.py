"""Face-verification pair sets in insightface's ``.bin`` format (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW), without MXNet.

A ``.bin`` is a pickle of the pair ``(images, issame)``: ``images`` holds 2 * P encoded images, pair ``i`` being
entries ``2i`` and ``2i + 1``; ``issame`` holds P bools. insightface's packing scripts store the entries either as the
raw bytes of the image files (``lfw2pack.py``, written by Python 2, so ``str`` that Python 3 reads as ``bytes``) or as
the uint8 buffers ``cv2.imencode`` returns (``build_eval_pack.py``; shape ``(N,)`` or ``(N, 1)``), and pickle with
``pickle.HIGHEST_PROTOCOL``, which was 2 under Python 2.

A pickle can run arbitrary code on loading, so files are read with an unpickler that only resolves the few globals
these files need (numpy arrays and scalars, ``bytes`` under protocol 2) and refuses every other one.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from lafs.data.images import UndecodableImage, decode_image, encode_jpeg, read_image_file, resize_square
from lafs.data.pair_lists import parse_pair_list
from lafs.errors import DataError
from lafs.files import write_atomic

# Protocol 4 stores bytes compactly (protocol 2 would spell them as latin-1 text) and is read by every Python 3 that
# insightface's PyTorch and MXNet loaders run on; protocol 5 would need Python 3.8.
BIN_PICKLE_PROTOCOL = 4

Entry = bytes | np.ndarray


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 pickles bytes under protocol 2 as `_codecs.encode(text, "latin1")`; no other codec is ever needed.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


def _pickled_with(reduced: str | tuple[Any, ...]) -> Callable[..., Any]:
    """The callable of a ``__reduce__`` value: numpy arrays and scalars reduce to (callable, args, ...), never to the
    name of a global (the ``str`` form ``object.__reduce__`` is typed with)."""
    return cast("Callable[..., Any]", reduced[0])


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    # Ask numpy which functions it pickles arrays and scalars with rather than importing them by name: they live in
    # numpy.core under numpy 1.x and numpy._core under 2.x, and files written by either must load under either.
    empty = np.empty(0, np.uint8)
    reconstruct = _pickled_with(empty.__reduce__())
    frombuffer = _pickled_with(empty.__reduce_ex__(5))
    scalar = _pickled_with(np.bool_(True).__reduce__())
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): bytes,  # b"" under protocol 2
        ("__builtin__", "bytes"): bytes,  # the same, as Python 2 names the module
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct  # ndarray, protocols 2 to 4
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer  # ndarray, protocol 5
        allowed[(f"{core}.multiarray", "scalar")] = scalar  # numpy bool / integer scalars
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a ``.bin`` needs; anything else (``os.system``, ``eval``, ...) is a `DataError`."""

    allowed = _allowed_globals()

    def __init__(self, file: Any, path: Path) -> None:
        # encoding="bytes": Python 2 `str` entries are image bytes, not text.
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(
                f"{self.path}: refusing to load global {module}.{name} (a .bin holds only images and labels)"
            )
        return found


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as file:
            return _RestrictedUnpickler(file, path).load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    except DataError:
        raise
    except Exception as error:  # a damaged pickle fails with almost any exception type
        raise DataError(f"{path}: not a readable pickle ({type(error).__name__}: {_one_line(error)})") from None


def _is_buffer(entry: np.ndarray) -> bool:
    return entry.ndim == 1 or (entry.ndim == 2 and entry.shape[1] == 1)  # cv2.imencode gives (N, 1) before OpenCV 5


def _is_decoded(entry: np.ndarray) -> bool:
    return entry.ndim == 3 and entry.shape[2] == 3


def _issame_array(path: Path, issame: Any) -> np.ndarray:
    # Only a flat list reaches np.asarray, which walks nested lists in full: a few hundred bytes of pickle memo can
    # name a list nested 40 deep with 2**40 leaves.
    flat = isinstance(issame, np.ndarray) or (
        isinstance(issame, list | tuple) and all(isinstance(label, bool | int | np.generic) for label in issame)
    )
    if not flat:
        inner = {type(label).__name__ for label in issame} if isinstance(issame, list | tuple) else set()
        of = f" of {'/'.join(sorted(inner))}" if inner else ""
        raise DataError(f"{path}: issame must be a list of bools, got {type(issame).__name__}{of}")
    try:
        labels = np.asarray(issame)
    except ValueError:
        labels = np.asarray(None)
    if labels.shape == (0,):  # np.asarray([]) is float
        labels = labels.astype(bool)
    if labels.dtype != bool and labels.dtype.kind in "iu" and np.isin(labels, (0, 1)).all():
        labels = labels.astype(bool)
    if labels.dtype != bool or labels.ndim != 1:
        raise DataError(f"{path}: issame must be a list of bools, got {type(issame).__name__} of {labels.dtype}")
    return labels


def read_bin(path: str | os.PathLike[str]) -> tuple[list[Entry], np.ndarray]:
    """Entries of a ``.bin`` still encoded, for lazy decoding with `decode_entry`, and issame (P,) bool.

    Entries are ``bytes`` or uint8 arrays: encoded buffers ``(N,)`` / ``(N, 1)``, or already decoded H x W x 3 images.
    Entries ``2i`` and ``2i + 1`` are pair ``i``. Raises `DataError` for a file that is not such a pickle.
    """
    path = Path(path)
    data = _unpickle(path)
    if not isinstance(data, tuple | list) or len(data) != 2:
        got = f"{type(data).__name__} of {len(data)}" if isinstance(data, tuple | list) else type(data).__name__
        raise DataError(f"{path}: expected a pickled pair (images, issame), got {got}")
    images, issame = data
    if not isinstance(images, list | tuple):
        raise DataError(f"{path}: images must be a list, got {type(images).__name__}")
    labels = _issame_array(path, issame)
    if len(images) != 2 * len(labels):
        raise DataError(f"{path}: {len(images)} images for {len(labels)} pairs (expected {2 * len(labels)})")
    arrays = [entry for entry in images if isinstance(entry, np.ndarray)]
    held, size = sum(entry.nbytes for entry in arrays), path.stat().st_size
    if held > size:  # a pickle can call ndarray(shape) for memory it never stores: 99 bytes for 20 x 4.8 GB
        raise DataError(f"{path}: its image arrays claim {held:,} bytes, more than the file's {size:,}")
    for index, entry in enumerate(images):
        if isinstance(entry, bytes):
            continue
        if not isinstance(entry, np.ndarray):
            raise DataError(f"{path}: image {index} is a {type(entry).__name__}, expected bytes or a uint8 array")
        if entry.dtype != np.uint8 or not (_is_buffer(entry) or _is_decoded(entry)):
            raise DataError(
                f"{path}: image {index} is a {entry.dtype} array of shape {entry.shape}, "
                "expected an encoded uint8 buffer or an H x W x 3 uint8 image"
            )
    return list(images), labels


def decode_entry(entry: Entry, image_size: int | None = None) -> np.ndarray:
    """One `read_bin` entry as an H x W x 3 uint8 RGB image (image_size x image_size if given).

    An already decoded array entry is taken to be RGB. Raises `DataError` if the entry is not a decodable image.
    """
    if isinstance(entry, np.ndarray) and _is_decoded(entry):
        return resize_square(np.ascontiguousarray(entry), image_size)
    try:
        return decode_image(entry, size=image_size)
    except (UndecodableImage, cv2.error):
        raise DataError(
            f"does not decode as an image ({len(entry) if isinstance(entry, bytes) else entry.size} bytes)"
        ) from None


class BinImages:
    """The images of a ``.bin`` decoded one at a time at their stored size: ``load(i) -> {"image": H x W x 3 uint8
    RGB, "index": i}``, the interface of the landmark extractor's datasets (`lafs.landmarks.extract`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries, _ = read_bin(self.path)

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> dict[str, Any]:
        """Image ``index``; one that does not decode is a `DataError` naming the file and the image."""
        try:
            return {"image": decode_entry(self.entries[index]), "index": index}
        except DataError as error:
            raise DataError(f"{self.path}: image {index} {error}") from None


def load_bin(path: str | os.PathLike[str], image_size: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Decoded images (2 * P of H x W x 3 uint8 RGB; pair i is 2i, 2i + 1) and issame (P,) bool of a ``.bin``.

    With ``image_size``, images of another size are resized to image_size x image_size (insightface resizes to 112
    on loading; its published sets are already 112 x 112). Raises `DataError` naming the file for unusable input.
    """
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    entries, issame = read_bin(path)
    images = []
    for index, entry in enumerate(entries):
        try:
            images.append(decode_entry(entry, image_size))
        except DataError as error:
            raise DataError(f"{path}: image {index} {error}") from None
    return images, issame


def write_bin(
    path: str | os.PathLike[str],
    images_a_b: Sequence[tuple[np.ndarray, np.ndarray]],
    issame: Sequence[bool],
    quality: int = 95,
) -> None:
    """Write pairs of H x W x 3 uint8 RGB images as an insightface ``.bin`` (JPEG bytes, protocol 4), atomically.

    The file holds ``(list of 2 * P JPEG bytes, list of P bools)``, which insightface's own ``load_bin`` reads.
    """
    if len(images_a_b) != len(issame):
        raise ValueError(f"{len(images_a_b)} image pairs but {len(issame)} issame labels")
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    encoded = []
    for pair_index, pair in enumerate(images_a_b):
        for image in pair:
            if image.dtype != np.uint8 or not _is_decoded(image):
                raise ValueError(f"pair {pair_index}: expected H x W x 3 uint8 RGB, got {image.dtype} {image.shape}")
            encoded.append(encode_jpeg(image, quality))
    labels = [bool(label) for label in issame]  # plain bools: numpy scalars would need numpy to unpickle

    try:
        write_atomic(path, pickle.dumps((encoded, labels), protocol=BIN_PICKLE_PROTOCOL))
    except OSError as error:
        raise DataError(f"{path}: cannot write: {error.strerror or error}") from None


def load_pair_images(
    path: str | os.PathLike[str], image_size: int | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[bool]]:
    """The images (H x W x 3 uint8 RGB, image_size x image_size if given) and labels of a pairs file.

    Raises `DataError` naming ``file:line`` for a malformed line or an image that is missing or does not decode.
    """
    path = Path(path)
    cache: dict[Path, np.ndarray] = {}  # sets reuse images across pairs; share one decoded copy

    def image(number: int, image_path: Path) -> np.ndarray:
        if image_path not in cache:
            if not image_path.is_file():
                raise DataError(f"{path}:{number}: no such image {image_path}")
            try:
                cache[image_path] = read_image_file(image_path, size=image_size)
            except UndecodableImage:
                raise DataError(f"{path}:{number}: {image_path} does not decode as an image") from None
        return cache[image_path]

    parsed = parse_pair_list(path)
    pairs = [(image(number, a), image(number, b)) for number, a, b, _ in parsed]
    return pairs, [same for *_, same in parsed]
