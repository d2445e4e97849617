"""What several data tests share: a textured image, and a JPEG whose middle is garbled."""

from __future__ import annotations

import numpy as np


def textured(seed: int, size: int = 112) -> np.ndarray:
    """An RGB image with fine texture, so that its JPEG has a long entropy-coded scan."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def garble(jpeg: bytes, length: int = 16) -> bytes:
    """``jpeg`` with ``length`` bytes in its middle overwritten (no 0xFF, so no stray marker): it still decodes, with
    a libjpeg warning ("Corrupt JPEG data")."""
    middle = len(jpeg) // 2
    noise = np.random.default_rng(0).integers(0, 255, size=length, dtype=np.uint8).tobytes()
    return jpeg[:middle] + noise + jpeg[middle + length :]
