"""Progress of long jobs: plain lines off a terminal, tqdm's bar on one, nothing when disabled."""

from __future__ import annotations

import io

import pytest

import lafs.progress
from lafs.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_update_is_a_line_with_count_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lafs.progress, "LOG_SECONDS", 0.0)  # every update prints
    log = io.StringIO()
    assert list(progress_bar(range(3), desc="align", unit="photo", stream=log)) == [0, 1, 2]
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[0].startswith("align:   0% 0/3 [00:00<?")
    assert lines[-1].startswith("align: 100% 3/3 [") and lines[-1].endswith("photo/s]")


def test_off_a_terminal_lines_are_rate_limited() -> None:
    log = io.StringIO()
    with progress_bar(total=1000, desc="decode", unit="img", stream=log) as bar:
        for _ in range(1000):
            bar.update(1)
    assert len(log.getvalue().splitlines()) == 2  # the start and the end within LOG_SECONDS


def test_a_terminal_gets_the_bar_and_a_disabled_one_nothing() -> None:
    terminal = _Terminal()
    list(progress_bar(range(2), desc="embedding", stream=terminal))
    assert "\r" in terminal.getvalue() and "embedding" in terminal.getvalue()
    quiet = io.StringIO()
    list(progress_bar(range(2), desc="x", stream=quiet, enabled=False))
    assert quiet.getvalue() == ""
