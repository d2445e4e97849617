"""entry_point: a user error is one line on stderr, also when raised inside a DataLoader worker."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from torch.utils.data import DataLoader, Dataset

from lafs.cli import entry_point
from lafs.errors import DataError


class Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        raise DataError(f"data.rec: record {i} is bad")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_data_error_is_one_line_with_or_without_workers(capsys, workers):
    @entry_point
    def main(argv: Sequence[str] | None = None) -> int:
        list(DataLoader(Broken(), batch_size=None, num_workers=workers))
        return 0

    assert main([]) == 2
    assert capsys.readouterr().err == "error: data.rec: record 0 is bad\n"
