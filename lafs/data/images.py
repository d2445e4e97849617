"""Decoding encoded face images to H x W x 3 uint8 RGB, the one pixel format every reader returns."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import warnings
from typing import IO

import cv2
import numpy as np
from PIL import Image

from lafs.errors import DataError


class UndecodableImage(DataError):
    """An image buffer or file that OpenCV cannot decode."""


# libjpeg's warnings for damaged data (jerror.h: JWRN_*); others, such as an unknown JFIF revision, are harmless.
_DAMAGE_WARNINGS = (b"Corrupt JPEG data", b"Premature end of JPEG file", b"Invalid SOS", b"Inconsistent progression")


class _StderrCatcher:
    """What C code writes to file descriptor 2 during a call, caught in an unlinked temporary file.

    libjpeg, inside OpenCV, reports a damaged JPEG that still yields an image only by printing a warning there
    ("Corrupt JPEG data: 162 extraneous bytes before marker 0xd9"). Catching it costs a few system calls per image
    (dup, two dup2, close, lseek) and a lock: one catcher per process, so a thread that writes to stderr meanwhile
    is caught too; what is not a libjpeg damage warning is written back to stderr.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._sink: IO[bytes] | None = None

    def _fd(self) -> int:
        if self._sink is None or self._pid != os.getpid():  # a forked worker gets its own file (and offset)
            # Held open for the life of the process, unlinked from the start.
            self._sink, self._pid = tempfile.TemporaryFile(), os.getpid()  # noqa: SIM115
        return self._sink.fileno()

    def decode(self, data: np.ndarray, flags: int) -> tuple[np.ndarray | None, bytes]:
        """``cv2.imdecode(data, flags)`` and what it wrote to stderr."""
        with self._lock:
            sink = self._fd()
            saved = os.dup(2)
            try:
                os.dup2(sink, 2)
                try:
                    image = cv2.imdecode(data, flags)
                finally:
                    os.dup2(saved, 2)
            finally:
                os.close(saved)
            written = os.lseek(sink, 0, os.SEEK_CUR)
            if not written:
                return image, b""
            os.lseek(sink, 0, os.SEEK_SET)
            text = os.read(sink, written)
            os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)  # the next warning starts at 0 again, not after a run of NUL bytes
            return image, text


_CATCHER = _StderrCatcher()


MAX_PIXELS = 120_000_000  # a larger image is refused before decoding: 360 MB of RGB, more than any camera's photo


def check_pixel_count(data: np.ndarray) -> None:
    """`UndecodableImage` when the header of encoded ``data`` claims more than `MAX_PIXELS` pixels: a 388-byte PNG
    can claim 20000 x 20000 (a decompression bomb of 1.2 GB). Only the header is read (Pillow); formats Pillow does
    not know pass unchecked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it in one line
            with Image.open(io.BytesIO(data[: 1 << 20].tobytes())) as image:  # headers sit in the first MB
                width, height = image.size
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours: it says the size
        raise UndecodableImage(f"not decoded: {error}") from None
    except Exception:  # a header Pillow cannot read: OpenCV decides
        return
    if width * height > MAX_PIXELS:
        raise UndecodableImage(
            f"{width} x {height} pixels is more than {MAX_PIXELS // 1_000_000} million: not decoded (a decompression "
            "bomb, or a photo to downscale first)"
        )


def decode_image(
    buffer: bytes | np.ndarray, bgr: bool = False, size: int | None = None, strict: bool = False
) -> np.ndarray:
    """Encoded image bytes -> H x W x 3 uint8 RGB (grey becomes 3 channels), resized to size x size if given.

    ``bgr=True`` declares that the encoded pixels are stored in BGR order (MS1MV3's ``.rec`` is), so the channels
    are swapped once more than for an ordinary file. ``strict=True`` also refuses a JPEG that libjpeg decodes only
    with a damaged-data warning (a garbled middle decodes to an image that is wrong below the damage); it decodes
    one JPEG at a time per process (see `_StderrCatcher`), so it is for training's data sets, not thread pools.
    """
    data = np.frombuffer(buffer, dtype=np.uint8) if isinstance(buffer, (bytes, bytearray, memoryview)) else buffer
    data = data.reshape(-1)
    # OpenCV's BGR result is the true RGB when the stored pixels were BGR.
    flags = (cv2.IMREAD_COLOR_BGR if bgr else cv2.IMREAD_COLOR_RGB) | cv2.IMREAD_IGNORE_ORIENTATION
    if data.size:
        check_pixel_count(data)
    if not data.size:
        image = None
    elif strict and data.size > 2 and data[0] == 0xFF and data[1] == 0xD8:  # a JPEG
        image, text = _CATCHER.decode(data, flags)
        damage = [line for line in text.splitlines() if line.startswith(_DAMAGE_WARNINGS)]
        other = b"".join(line + b"\n" for line in text.splitlines() if not line.startswith(_DAMAGE_WARNINGS))
        if other:
            os.write(2, other)
        if damage:
            raise UndecodableImage(f"damaged JPEG: {damage[0].decode(errors='replace')}")
    else:
        image = cv2.imdecode(data, flags)
    if image is None:
        raise UndecodableImage("image does not decode")
    return resize_square(image, size)


def read_image_file(
    path: str | os.PathLike[str], bgr: bool = False, size: int | None = None, strict: bool = False
) -> np.ndarray:
    """An image file -> H x W x 3 uint8 RGB (see `decode_image`); unreadable files are `UndecodableImage`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UndecodableImage(f"{path}: {exc.strerror or exc}") from None
    try:
        return decode_image(data, bgr, size, strict)
    except UndecodableImage as exc:
        raise UndecodableImage(f"{path}: {exc}") from None


def encode_jpeg(image: np.ndarray, quality: int = 95, bgr: bool = False) -> bytes:
    """JPEG bytes of an H x W x 3 uint8 RGB image; ``bgr=True`` stores the channels swapped (MS1MV3's order)."""
    # OpenCV takes arrays for BGR: converting gives an ordinary file, not converting stores the channels swapped.
    pixels = image if bgr else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError(f"JPEG encoding failed for a {image.dtype} {image.shape} image")
    return buffer.tobytes()


def resize_square(image: np.ndarray, size: int | None) -> np.ndarray:
    """Resize to size x size (area filter when shrinking, bilinear when enlarging); None or same size: unchanged."""
    if size is None or image.shape[:2] == (size, size):
        return image
    shrinking = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
