"""Decoding encoded face images to H x W x 3 uint8 RGB, the one pixel format every reader returns."""

from __future__ import annotations

import os

import cv2
import numpy as np

from lafs.errors import DataError


class UndecodableImage(DataError):
    """An image buffer or file that OpenCV cannot decode."""


def decode_image(buffer: bytes | np.ndarray, bgr: bool = False, size: int | None = None) -> np.ndarray:
    """Encoded image bytes -> H x W x 3 uint8 RGB (grey becomes 3 channels), resized to size x size if given.

    ``bgr=True`` declares that the encoded pixels are stored in BGR order (MS1MV3's ``.rec`` is), so the channels
    are swapped once more than for an ordinary file.
    """
    data = np.frombuffer(buffer, dtype=np.uint8) if isinstance(buffer, (bytes, bytearray, memoryview)) else buffer
    # OpenCV's BGR result is the true RGB when the stored pixels were BGR.
    mode = cv2.IMREAD_COLOR_BGR if bgr else cv2.IMREAD_COLOR_RGB
    image = cv2.imdecode(data.reshape(-1), mode | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise UndecodableImage("image does not decode")
    return resize_square(image, size)


def read_image_file(path: str | os.PathLike[str], bgr: bool = False, size: int | None = None) -> np.ndarray:
    """An image file -> H x W x 3 uint8 RGB (see `decode_image`); unreadable files are `UndecodableImage`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UndecodableImage(f"{path}: {exc.strerror or exc}") from None
    try:
        return decode_image(data, bgr, size)
    except UndecodableImage:
        raise UndecodableImage(f"{path}: image does not decode") from None


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
