"""Decode once: every image of a dataset decoded into one uint8 array in memory (``data.in_memory=true``).

On a small CPU machine decoding and resizing every image every epoch costs a loader worker, and a worker costs a
core that training needs: with the images in memory a run takes ``num_workers=0`` and gives every core to torch.
The first epoch's decode happens once, at start-up, with progress; records that do not decode are substituted and
counted exactly as during training (`BadRecordGuard`), so the dataset's labels never change.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lafs.errors import ConfigError
from lafs.progress import progress_bar

logger = logging.getLogger("lafs.data")

MEMORY_SHARE = 0.5  # refuse to hold more than this share of the machine's available memory


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux's MemAvailable; the physical total elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class InMemoryImages(Dataset):
    """``base``'s items with their images decoded once into a (N, S, S, 3) uint8 array; same items, same order.

    ``base`` yields ``{"image": S x S x 3 uint8, "label", "index"}`` at one fixed size ``image_size`` (S).
    """

    def __init__(self, base: Any, image_size: int, source: str = "") -> None:
        count = len(base)
        need = count * image_size * image_size * 3
        free = available_memory()
        if need > MEMORY_SHARE * free:
            raise ConfigError(
                f"data.in_memory: {source or 'the dataset'} needs {need / 2**30:.1f} GiB decoded, more than half of "
                f"the {free / 2**30:.1f} GiB available; set data.in_memory=false (or a smaller data.image_size)"
            )
        self.labels, self.num_classes = np.asarray(base.labels), base.num_classes
        self.images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        self.label_of = np.empty(count, dtype=np.int64)
        self.index_of = np.empty(count, dtype=np.int64)
        start = time.perf_counter()
        logger.info(f"decoding {count} images of {source or 'the dataset'} into memory ({need / 2**20:.0f} MiB)")
        for i in progress_bar(range(count), desc="decode", unit="img"):
            item = base[i]  # a bad record comes back as the next good one, with its own label and index
            self.images[i], self.label_of[i], self.index_of[i] = item["image"], item["label"], item["index"]
        self.bad_records = int(getattr(base, "bad_records", 0))
        seconds = time.perf_counter() - start
        logger.info(f"decoded {count} images in {seconds:.1f} s ({count / max(seconds, 1e-9):.0f} images/s)")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": int(self.label_of[i]), "index": int(self.index_of[i])}
