"""Progress of long jobs: tqdm's bar on a terminal, plain lines (count, rate, ETA) off one.

Off a terminal (a log file, a cluster job) tqdm would print nothing (``disable=None``) or one ever-growing line of
carriage returns; here it prints one line at start, one at most every `LOG_SECONDS` and one at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

LOG_SECONDS = 30.0  # off a terminal: at most one line per this many seconds
T = TypeVar("T")


class _Lines:
    """A stream for tqdm that turns its carriage-return redraws into separate lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(
    iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
    enabled: bool = True, stream: TextIO | None = None,
) -> tqdm[T]:  # fmt: skip
    """A tqdm over ``iterable`` (or updated by hand up to ``total``): a bar on a terminal, else plain lines like
    ``landmarks:  40% 400/1000 [00:10<00:15, 40.00img/s]``. ``enabled=False`` shows nothing (other
    processes of a launch). ``stream``: where to write (default standard error, beside the log messages; standard
    output keeps only the results a tool prints)."""
    stream = stream or sys.stderr
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "disable": not enabled}
    if stream.isatty():
        return tqdm(iterable, file=stream, dynamic_ncols=True, **options)
    line = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
    return tqdm(
        iterable, file=_Lines(stream), mininterval=LOG_SECONDS, maxinterval=LOG_SECONDS, bar_format=line, **options
    )
