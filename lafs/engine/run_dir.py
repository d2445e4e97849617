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
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from lafs.engine.checkpoints import checkpoints
from lafs.errors import ConfigError
from lafs.files import MANIFEST, output_kind, write_atomic
from lafs.landmarks.cache import META_FILE as CACHE_META

RUN_KIND = "lafs-run"
LOCK_FILE = ".lafs-run.lock"
REPLACED_PREFIX = "replaced-"  # where replace=true moves an earlier run's files, inside the run directory
PROBE_PREFIX = ".lafs-shared-probe-"  # written by process 0 at start-up, read by every process, then removed
PROBE_PATIENCE_S = 15.0  # a network file system may show a new file to other machines a moment later


def is_run_directory(folder: Path) -> bool:
    """``folder`` holds a training run: its manifest says so, or (older runs) it has finished checkpoints."""
    return output_kind(folder) == RUN_KIND or bool(checkpoints(folder / "checkpoints"))


def check_run_directory(folder: Path) -> None:
    """`ConfigError` unless ``folder`` is missing, empty (but for our lock) or a run directory; nothing is written."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {folder}: exists and is not a folder")
    if not folder.is_dir() or is_run_directory(folder):
        return
    others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE and not p.name.startswith(PROBE_PREFIX))
    if others:
        raise ConfigError(
            f"output_dir {folder}: a folder that is not empty ({others[0]}, ...) and not a training run directory; "
            "choose a new or empty output_dir"
        )


def check_shared_run_directory(accelerator: Accelerator, folder: Path) -> None:
    """`ConfigError` on every process unless all of them see the same run directory ``folder``.

    One main process writes checkpoints, logs and exports for all and renames the folders every process wrote into:
    on machines that each have their own disk, the other machines' parts would be stranded (their random states
    in a never-finished ``.tmp-step_N``) and a resume would silently lose them. Process 0 writes a probe file with a
    fresh name (creating ``folder`` if needed), every process looks for it, and process 0 removes it again, before
    anything else is written. Called before any process has looked at ``folder``,
    so that no network file system answers from a cached "no such folder". Every process reaches the same verdict:
    a failure of process 0's own (a read-only or full disk) is passed to the others, never left for them to wait on.
    """
    if accelerator.num_processes == 1:
        return
    # The probe's name, and process 0's failure to write it (None: written), the same on every process.
    shared: list[str | None] = [f"{PROBE_PREFIX}{secrets.token_hex(8)}", None]
    if accelerator.is_main_process:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(f"{PROBE_PREFIX}*"):  # left by a start that was killed during this check
                stale.unlink(missing_ok=True)
            (folder / str(shared[0])).write_text(f"written by process 0 on {socket.gethostname()}\n")
        except OSError as error:
            shared[1] = f"output_dir {folder}: {error.strerror or error}"
    broadcast_object_list(shared)
    if shared[1] is not None:
        raise ConfigError(shared[1])
    probe = folder / str(shared[0])
    deadline = time.monotonic() + PROBE_PATIENCE_S
    while not probe.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    here = f"process {accelerator.process_index} on {socket.gethostname()}"
    blind = [where for where in gather_object([None if probe.is_file() else here]) if where]
    if accelerator.is_main_process:
        probe.unlink(missing_ok=True)  # the folder stays: the other processes may already be using it
    if blind:
        more = f" (and {len(blind) - 1} more)" if len(blind) > 1 else ""
        raise ConfigError(
            f"output_dir {folder}: {blind[0]}{more} does not see the file process 0 wrote there; every process "
            "must see the same run directory: put output_dir on a file system all machines share (NFS, Lustre, ...)"
        )


def earlier_run(folder: Path) -> str | None:
    """What of an earlier run ``folder`` holds (its newest checkpoint, or its log), or None."""
    saved = checkpoints(folder / "checkpoints")
    if saved:
        return f"a run with checkpoints up to {saved[-1].name}"
    return "a run's log.jsonl" if (folder / "log.jsonl").is_file() else None


def check_fresh_start(folder: Path, resume: str, replace: bool) -> None:
    """A run that does not continue ``folder``'s own history (``resume`` is ``""`` or another run's checkpoint)
    into a folder that holds an earlier run: `ConfigError` unless ``replace`` (then `set_aside` moves it)."""
    own = resume == "auto" or (resume and Path(resume).resolve().parent == (folder / "checkpoints").resolve())
    earlier = None if own else earlier_run(folder)
    if earlier is not None and not replace:
        raise ConfigError(
            f"output_dir {folder} holds {earlier}; a fresh start there would mix two runs' logs and checkpoints: "
            f"pass replace=true (the earlier run moves into {folder}/{REPLACED_PREFIX}<time>/), resume=auto to "
            "continue it, or choose another output_dir"
        )


def set_aside(folder: Path) -> Path:
    """Move an earlier run's files out of the way, into ``folder/replaced-<time>/`` (one rename each, nothing
    deleted); our lock, the manifest, earlier replaced-* folders and landmark caches (data, not a run's) stay."""
    kept = folder / f"{REPLACED_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    kept.mkdir()
    for path in sorted(folder.iterdir()):
        cache = (path / CACHE_META).is_file()
        if path.name not in (LOCK_FILE, MANIFEST) and not path.name.startswith(REPLACED_PREFIX) and not cache:
            path.rename(kept / path.name)
    return kept


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

    def claim(self, folder: Path, replace: bool = False) -> Path | None:
        """Take the lock; with ``replace``, then move an earlier run aside (returns where), under the lock."""
        self.file = claim_run_directory(folder)
        return set_aside(folder) if replace and earlier_run(folder) is not None else None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the flock
            self.file = None
