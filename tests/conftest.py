"""Shared fixtures: small data sets written to disk from the synthetic faces."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> str:
    """A TCP port on this host that nothing listens on now, for a launch's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def launch_two_processes(script: str, *arguments: str) -> None:
    """Run ``script`` (relative to the repository) as 2 real gloo processes through ``accelerate launch``."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port",  # a free one: accelerate's default 29500 may be another job's on a shared machine
        free_port(),
        str(ROOT / script),
        *arguments,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


def launch_two_nodes(
    script: str, *arguments: str, output_dirs: tuple[Path, Path], launcher: str = "accelerate"
) -> list[subprocess.CompletedProcess]:
    """Run ``script`` as a two-machine run on this host, one gloo process per "machine", each started by its own
    launcher rendezvousing on a free local port: ``accelerate`` (``accelerate launch --num_machines 2``), ``slurm``
    (configs/slurm/node.sh with the variables srun sets) or ``torchrun`` (c10d rendezvous). Node r writes into
    ``output_dirs[r]`` (the same folder twice: a shared file system). Returns both launchers' results, node 0 first,
    their output (stdout and stderr together) as ``stderr``."""
    port = free_port()
    config = str(ROOT / "configs/accelerate/cpu_2proc.yaml")

    def start(rank: int, log: Any) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        entry = [str(ROOT / script), *arguments, f"output_dir={output_dirs[rank]}"]
        if launcher == "slurm":
            command = ["bash", str(ROOT / "configs/slurm/node.sh"), *entry]
            env |= {"SLURM_NNODES": "2", "SLURM_NODEID": str(rank), "MAIN_ADDR": "127.0.0.1", "MAIN_PORT": port,
                    "PROCESSES_PER_NODE": "1", "ACCELERATE_CONFIG": config, "PYTHON": sys.executable}  # fmt: skip
        elif launcher == "torchrun":
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                       "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "test",
                       *entry]  # fmt: skip
        else:
            command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
                       "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                       "--main_process_ip", "127.0.0.1", "--main_process_port", port, *entry]  # fmt: skip
        # Output into files, not pipes: a launcher whose pipe nobody reads would block once it filled.
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                                start_new_session=True)  # fmt: skip

    with tempfile.TemporaryDirectory() as folder:
        logs = [open(Path(folder) / f"node{rank}.log", "w+") for rank in range(2)]  # noqa: SIM115
        launchers = [start(rank, log) for rank, log in enumerate(logs)]
        try:
            codes = [process.wait(timeout=300) for process in launchers]
        finally:  # a hung run must not leave its processes holding the port and the cores
            for process in launchers:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        results = []
        for process, code, log in zip(launchers, codes, logs, strict=True):
            log.seek(0)
            results.append(subprocess.CompletedProcess(process.args, code, "", log.read()))
            log.close()
    return results


def run_with_memory_limit(code: str, gib: float = 6.0, seconds: int = 120) -> subprocess.CompletedProcess[str]:
    """Python ``code`` in a child process whose address space is capped at ``gib`` (importing torch alone reserves
    about 4 GiB of it) and whose run is cut after ``seconds``: an input that exhausts memory then fails its test
    instead of swapping the machine."""

    def cap() -> None:
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    command = [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=seconds, preexec_fn=cap, cwd=ROOT)


def assert_bad_value_is_one_line(
    main: Callable[[list[str]], int], arguments: list[str], run_dir: Path, key: str, capsys: pytest.CaptureFixture
) -> None:
    """An entry point given a bad value for ``key`` prints one ``error: <key> ...`` line, exits 2, writes nothing."""
    assert main([*arguments, f"output_dir={run_dir}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {key} ") and error.count("\n") == 1
    assert not run_dir.exists()


def write_face_folder(root: Path, identities: int = 3, per_identity: int = 4, seed: int = 0) -> tuple[Path, list]:
    """Synthetic faces as root/<identity>/<n>.png; returns the root and the rendered items in folder order."""
    faces = SyntheticFaces(SyntheticFacesConfig(num_identities=identities, images_per_identity=per_identity, seed=seed))
    items = [faces[i] for i in range(len(faces))]
    for item in items:
        folder = root / f"person_{item['label']:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        number = item["index"] % per_identity
        cv2.imwrite(str(folder / f"{number}.png"), cv2.cvtColor(item["image"], cv2.COLOR_RGB2BGR))
    return root, items


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    return write_face_folder(tmp_path_factory.mktemp("faces") / "faces")


def grey_image(path: Path, size: int = 112) -> Path:
    cv2.imwrite(str(path), np.full((size, size, 3), 127, dtype=np.uint8))
    return path
