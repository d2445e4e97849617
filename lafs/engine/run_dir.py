"""A run directory belongs to one run: training writes only into a missing or empty folder or its own run
directory, and only one run writes into it at a time.

A run directory is recognised by its manifest (``.lafs-output.json`` of kind ``lafs-run``, `lafs.files`), or, for
directories written before manifests, by finished checkpoints under ``checkpoints/``. Anything else that is not
empty (a user's folder that happens to hold a ``config.yaml``) is refused with one line. While a run writes, its main
process holds an exclusive lock on ``.lafs-run.lock`` (``flock``: the operating system releases it when the process
ends, however it ends, so a crashed run leaves no stale lock), and a second run into the same directory is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from types import TracebackType
from typing import IO

from lafs.engine.checkpoints import checkpoints
from lafs.errors import ConfigError
from lafs.files import MANIFEST, output_kind, write_atomic

RUN_KIND = "lafs-run"
LOCK_FILE = ".lafs-run.lock"


def is_run_directory(folder: Path) -> bool:
    """``folder`` holds a training run: its manifest says so, or (older runs) it has finished checkpoints."""
    return output_kind(folder) == RUN_KIND or bool(checkpoints(folder / "checkpoints"))


def check_run_directory(folder: Path) -> None:
    """`ConfigError` unless ``folder`` is missing, empty (but for our lock) or a run directory; nothing is written."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {folder}: exists and is not a folder")
    if not folder.is_dir() or is_run_directory(folder):
        return
    others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
    if others:
        raise ConfigError(
            f"output_dir {folder}: a folder that is not empty ({others[0]}, ...) and not a training run directory; "
            "choose a new or empty output_dir"
        )


def claim_run_directory(folder: Path) -> IO[str]:
    """Create ``folder`` if needed, take its run lock (`ConfigError` when another run holds it) and mark it a run
    directory; returns the open lock file, which keeps the lock until it is closed or the process ends. The caller
    has run `check_run_directory` first, before the run itself put anything there (a landmark cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held open for the whole run)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ConfigError(
            f"output_dir {folder}: another run ({holder}) is writing into it; wait for it to end or choose another "
            "output_dir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    lock.flush()
    if output_kind(folder) != RUN_KIND:
        write_atomic(folder / MANIFEST, json.dumps({"kind": RUN_KIND, "files": []}, indent=2) + "\n")
    return lock


class RunLock:
    """The run lock of one `fit`, as a context: `claim` takes it (main process), leaving the context releases it,
    also when the run fails (a later run in the same process may then claim the directory again)."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None

    def claim(self, folder: Path) -> None:
        self.file = claim_run_directory(folder)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the flock
            self.file = None
