"""entry_point: a user error is one line on stderr, also when raised inside a DataLoader worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

import pytest
from torch.utils.data import DataLoader, Dataset

from lafs.cli import KEPT, entry_point
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


def test_sigterm_is_one_line_and_a_second_one_cannot_cut_the_clean_up(capsys):
    cleaned = []

    @entry_point
    def main(argv: Sequence[str] | None = None) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop
            time.sleep(5)  # never reached: the handler raises at the next line Python runs
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the launcher passing the same stop on: ignored now
            cleaned.append(True)
        return 0

    assert main([]) == 128 + signal.SIGTERM and cleaned == [True]
    assert capsys.readouterr().err == f"terminated (SIGTERM): {KEPT}\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored once the command is over


def test_data_loader_workers_killed_by_sigterm_are_the_same_stop(capsys):
    @entry_point
    def main(argv: Sequence[str] | None = None) -> int:
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")

    assert main([]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == f"terminated (SIGTERM, data loader workers first): {KEPT}\n"
