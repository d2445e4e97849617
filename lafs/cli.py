"""What every command-line entry point shares: user errors, and the environment's (a full disk, Ctrl-C, no memory),
become one line on stderr and exit status 2 (130 for Ctrl-C)."""

from __future__ import annotations

import argparse
import functools
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Protocol

from lafs.errors import ConfigError, LafsError


class Main(Protocol):
    """``main(argv=None) -> exit status``: a Protocol, not a Callable, so that ``argv`` keeps its default."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


# How torch re-raises an exception from a DataLoader worker (torch._utils.ExceptionWrapper): the same class, with
# "Caught <Class> in DataLoader worker process N.\nOriginal Traceback ..." and the formatted traceback as message.
_WORKER_TRACEBACK = re.compile(r"Caught \w+ in [^\n]*\nOriginal Traceback \(most recent call last\):\n")


KEPT = "finished checkpoints and outputs are kept (a half-written one was removed)"
# torch's report when a DataLoader worker died of a signal (its workers do not inherit our SIGTERM handling).
_WORKER_TERMINATED = re.compile(r"DataLoader worker \(pid [^)]*\) is killed by signal: Terminated")
OUT_OF_MEMORY = "out of memory (try a smaller batch or model, or data.in_memory=false)"
# torch's messages when an allocation fails: the CPU allocator's and CUDA's (torch.OutOfMemoryError).
_ALLOCATION_FAILED = re.compile(r"you tried to allocate \d+ bytes|Tried to allocate [\d.]+ [KMGTP]?i?B")


def error_message(error: LafsError) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker, that of the original (no traceback)."""
    text = str(error)
    if not _WORKER_TRACEBACK.match(text):
        return text
    kind = type(error)
    prefix = f"{kind.__module__}.{kind.__qualname__}: "
    lines = text.splitlines()
    last = next((i for i in reversed(range(len(lines))) if lines[i].startswith(prefix)), None)
    return text if last is None else "\n".join([lines[last][len(prefix) :], *lines[last + 1 :]]).strip()


class Terminated(BaseException):
    """SIGTERM, raised where the program is (as Ctrl-C raises KeyboardInterrupt), so that every ``finally`` and
    ``except BaseException`` clean-up runs: a half-written checkpoint or output folder is removed, not stranded."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Once: a launcher passes a scheduler's SIGTERM on to its processes, and a second one must not cut the clean-up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def entry_point(main: Main) -> Main:
    """Wrap ``main(argv) -> exit status`` so a `LafsError` prints ``error: <message>`` and returns 2."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        in_main_thread = threading.current_thread() is threading.main_thread()  # where Python runs signal handlers
        previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
        try:
            return main(argv)
        except Terminated:  # a scheduler's or launcher's stop: temporaries went on the way out, as for Ctrl-C
            print(f"terminated (SIGTERM): {KEPT}", file=sys.stderr)
            return 128 + signal.SIGTERM
        except LafsError as error:
            # A bad config fails the same way on every process of a launch: one process per machine says so.
            if not (isinstance(error, ConfigError) and os.environ.get("LOCAL_RANK", "0") != "0"):
                print(f"error: {error_message(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C: what was written whole stays (checkpoints, outputs are atomic)
            print("interrupted: finished checkpoints and outputs are kept; the same command resumes", file=sys.stderr)
            return 130
        except OSError as error:  # the environment, not the code: a full disk, a read-only folder, a lost mount
            where = f"{error.filename}: " if error.filename else ""
            print(f"error: {where}{error.strerror or error}", file=sys.stderr)
            return 2
        except MemoryError:
            print(f"error: {OUT_OF_MEMORY}", file=sys.stderr)
            return 2
        except RuntimeError as error:  # torch's allocators raise RuntimeError (torch.OutOfMemoryError on a GPU)
            if _WORKER_TERMINATED.search(str(error)):  # a job-wide SIGTERM reached the DataLoader workers first
                print(f"terminated (SIGTERM, data loader workers first): {KEPT}", file=sys.stderr)
                return 128 + signal.SIGTERM
            failed = _ALLOCATION_FAILED.search(str(error))
            if failed is None:
                raise
            print(f"error: {OUT_OF_MEMORY}: {failed.group(0)}", file=sys.stderr)
            return 2
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def int_in_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [minimum, maximum]."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads for this command (read it back with `set_threads`)."""
    parser.add_argument(
        "--threads",
        type=int_in_range(1),
        default=None,
        help="torch CPU threads (default: torch's, every core; on a busy machine fewer can be several times faster)",
    )


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None keeps torch's default)."""
    if threads is not None:
        import torch  # lazily: --help stays fast

        torch.set_num_threads(threads)
