"""Two machines on one host (two launchers of one gloo process each): training, checkpoints and resumes as on one
machine; a run directory that the machines do not share is refused in one line before anything is written."""

from __future__ import annotations

import socket
from pathlib import Path

from lafs.engine.checkpoints import checkpoints
from lafs.engine.run_log import read_log
from tests.conftest import launch_two_nodes, launch_two_processes
from tests.finetune.test_train import DEMO, PARTIAL_FC
from tests.lafs.test_pretrain import TINY

EXACT = ["deterministic=true", "optim.batch_size=4", "checkpoint_every=2"]


def succeeded(results: list) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]


def test_pretraining_on_two_nodes_stops_and_resumes_exactly(tmp_path: Path) -> None:
    unbroken = tmp_path / "unbroken"  # one machine, two processes, four steps
    launch_two_processes("lafs/pretrain.py", *TINY, *EXACT, f"output_dir={unbroken}", "max_steps=4")
    shared = tmp_path / "shared"
    succeeded(launch_two_nodes("lafs/pretrain.py", *TINY, *EXACT, "max_steps=2", output_dirs=(shared, shared)))
    succeeded(launch_two_nodes("lafs/pretrain.py", *TINY, *EXACT, "max_steps=4", output_dirs=(shared, shared)))
    assert [r["loss"] for r in read_log(shared)] == [r["loss"] for r in read_log(unbroken)]
    step = checkpoints(shared / "checkpoints")[-1]
    assert step.name == "step_00000004" and {p.name for p in step.glob("random_states_*")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    assert not list((shared / "checkpoints").glob(".tmp-*"))


def test_partial_fc_on_two_nodes_resumes_on_one(tmp_path: Path) -> None:
    arguments = [*DEMO, *PARTIAL_FC, *EXACT]
    shared = tmp_path / "shared"
    succeeded(launch_two_nodes("finetune/train.py", *arguments, "max_steps=2", output_dirs=(shared, shared)))
    # The same two processes on one machine (each node's shard of the classes re-split as before), two more steps.
    launch_two_processes("finetune/train.py", *arguments, f"output_dir={shared}", "max_steps=4")
    assert [r["step"] for r in read_log(shared) if "loss" in r] == [1, 2, 3, 4]


def test_torchrun_rendezvous_trains(tmp_path: Path) -> None:
    shared = tmp_path / "shared"  # node ranks assigned by the c10d rendezvous, not given
    succeeded(
        launch_two_nodes("lafs/pretrain.py", *TINY, "max_steps=2", output_dirs=(shared, shared), launcher="torchrun")
    )
    assert [r["step"] for r in read_log(shared)] == [1, 2]


def test_a_run_directory_per_machine_is_refused(tmp_path: Path) -> None:
    # Through the SLURM recipe's per-node launcher, with the variables srun would set.
    own = (tmp_path / "node0", tmp_path / "node1")  # each machine its own disk
    results = launch_two_nodes("lafs/pretrain.py", *TINY, "max_steps=2", output_dirs=own, launcher="slurm")
    assert all(result.returncode != 0 for result in results)
    said = (
        f"error: output_dir {{}}: process 1 on {socket.gethostname()} does not see the file process 0 wrote there; "
        "every process must see the same run directory: put output_dir on a file system all machines share (NFS, "
        "Lustre, ...)"
    )
    for rank, result in enumerate(results):  # each machine's log says it, once
        assert result.stderr.splitlines().count(said.format(own[rank])) == 1, result.stderr[-3000:]
    assert list(own[0].iterdir()) == [] and not own[1].exists()  # nothing written but process 0's empty folder
