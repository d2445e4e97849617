"""Skip, count and report records that fail to read during training, and stop when there are too many."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from lafs.errors import DataError

logger = logging.getLogger(__name__)
T = TypeVar("T")

MIN_READS = 100  # below this many reads a fraction says little, unless that is the whole data set


class BadRecordGuard:
    """Reads item ``i`` or, when it is bad, the next good one (``i + 1``, ``i + 2``, ... wrapping).

    The substitute keeps its own label and index, so no image ever gets another's label. Each bad item is logged
    once and counted (per process: every DataLoader worker counts what it reads). Once more than ``max_fraction`` of
    the distinct items read are bad, after ``MIN_READS`` of them (or all), `DataError`.
    """

    def __init__(self, source: str, size: int, max_fraction: float) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must lie in [0, 1], got {max_fraction}")
        self.source, self.size, self.max_fraction = source, size, max_fraction
        self._seen: set[int] = set()
        self._bad: set[int] = set()

    @property
    def bad(self) -> int:
        """Distinct bad items met so far in this process."""
        return len(self._bad)

    def read(self, index: int, load: Callable[[int], T]) -> T:
        """``load(j)`` for the first good ``j`` from ``index`` on; ``load`` raises `DataError` for a bad item."""
        for step in range(self.size):
            j = (index + step) % self.size
            self._seen.add(j)
            try:
                item = load(j)
            except DataError as problem:
                if j not in self._bad:
                    self._bad.add(j)
                    logger.warning("%s: skipping bad item %d (%s); using the next one", self.source, j, problem)
                self._check()
                continue
            self._check()
            return item
        raise DataError(f"{self.source}: no record can be read")

    def _check(self) -> None:
        if len(self._seen) >= min(MIN_READS, self.size) and len(self._bad) > self.max_fraction * len(self._seen):
            raise DataError(
                f"{self.source}: {len(self._bad)} of {len(self._seen)} records read are bad "
                f"(more than max_bad_fraction={self.max_fraction})"
            )
