"""BadRecordGuard: the limit is a share of the data set, and records dropped at open count against it."""

from __future__ import annotations

import pytest

from lafs.data.bad_records import BadRecordGuard
from lafs.errors import DataError


def loader(bad: set[int]):
    def load(i: int) -> int:
        if i in bad:
            raise DataError(f"item {i} is bad")
        return i

    return load


def test_two_bad_of_217_never_stop_a_pass():
    guard = BadRecordGuard("data", 217, 0.01)
    assert [guard.read(i, loader({5, 100})) for i in range(190)][99:102] == [99, 101, 101]
    assert guard.bad == 2


def test_skipped_at_open_count_against_the_limit():
    guard = BadRecordGuard("data", 215, 0.01, skipped=2)  # 2 of 217 records
    assert guard.bad == 2
    with pytest.raises(DataError, match="3 of 217"):
        guard.read(7, loader({7}))
    with pytest.raises(DataError, match="3 of 102"):
        BadRecordGuard("data", 99, 0.02, skipped=3)
