"""Skip, count and report records that fail to read during training, and stop when there are too many."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from lafs.errors import DataError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class BadRecordGuard:
    """Reads item ``i`` or, when it is bad, the next good one (``i + 1``, ``i + 2``, ... wrapping).

    The substitute keeps its own label and index, so no image ever gets another's label. Each bad item is logged
    once and counted (per process: every DataLoader worker counts what it reads), together with the ``skipped``
    records that the data set already left out at open. The limit is a share of the whole data set (``size`` items
    plus the ``skipped``), not of the reads so far: `DataError` as soon as the bad records met exceed
    ``max_fraction`` of it, which no later read can undo. Each process judges the bad records it met itself; with
    persistent workers each one meets more of them every epoch.
    """

    def __init__(self, source: str, size: int, max_fraction: float, skipped: int = 0) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must lie in [0, 1], got {max_fraction}")
        self.source, self.size, self.max_fraction, self.skipped = source, size, max_fraction, skipped
        self._bad: set[int] = set()
        self._check()

    @property
    def bad(self) -> int:
        """Distinct bad records met so far in this process, those skipped at open included."""
        return self.skipped + len(self._bad)

    def read(self, index: int, load: Callable[[int], T]) -> T:
        """``load(j)`` for the first good ``j`` from ``index`` on; ``load`` raises `DataError` for a bad item."""
        for step in range(self.size):
            j = (index + step) % self.size
            try:
                return load(j)
            except DataError as problem:
                if j not in self._bad:
                    self._bad.add(j)
                    logger.warning("%s: skipping bad item %d (%s); using the next one", self.source, j, problem)
                    self._check()
        raise DataError(f"{self.source}: no record can be read")

    def _check(self) -> None:
        total = self.size + self.skipped
        if self.bad > self.max_fraction * total:
            raise DataError(
                f"{self.source}: {self.bad} of {total} records are bad (more than max_bad_fraction={self.max_fraction})"
            )
