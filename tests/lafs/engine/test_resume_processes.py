"""A run resumed on another number of processes continues the same schedules, or is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from lafs.engine.run_log import read_log
from lafs.pretrain import main as pretrain
from tests.conftest import launch_two_processes
from tests.lafs.test_pretrain import TINY

# TINY: 32 synthetic images, batches of 8, 2 epochs.


def schedule(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, epoch, learning rate) of every logged step."""
    return [(r["step"], r["epoch"], round(r["lr"], 12)) for r in read_log(run_dir)]


def test_two_processes_resumed_on_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    unbroken = tmp_path / "unbroken"  # one process taking 16 images per step: the 2-process run's schedules
    assert pretrain([*TINY, f"output_dir={unbroken}", "optim.grad_accum=2"]) == 0
    out = tmp_path / "run"
    launch_two_processes("lafs/pretrain.py", *TINY, f"output_dir={out}", "max_steps=2")  # 2 x 8 images per step
    log = (out / "log.jsonl").read_bytes()
    capsys.readouterr()

    # One process with the same batch would take 8 images per step: twice the steps, the epoch counter halved.
    assert pretrain([*TINY, f"output_dir={out}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: resume from ")
    assert "step_00000002: that run took 16 images per step (2 processes x batch 8 x grad_accum 1)" in error
    assert error.endswith("launch 2 processes, or keep its steps with optim.grad_accum=2")
    assert (out / "log.jsonl").read_bytes() == log  # nothing written

    assert pretrain([*TINY, f"output_dir={out}", "optim.grad_accum=2"]) == 0
    assert schedule(out) == schedule(unbroken)  # steps 3 and 4 as the unbroken run had them


def test_one_process_resumed_on_two(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert pretrain([*TINY, f"output_dir={out}", "optim.grad_accum=2", "max_steps=2"]) == 0  # 16 images per step
    launch_two_processes("lafs/pretrain.py", *TINY, f"output_dir={out}", "optim.grad_accum=1")  # 2 x 8: the same
    steps = schedule(out)
    assert [step for step, _, _ in steps] == [1, 2, 3, 4] and [epoch for _, epoch, _ in steps] == [0.5, 1, 1.5, 2]
    with pytest.raises(AssertionError, match="that run took 16 images per step"):  # 2 x 8 x 2 = 32 would not be
        launch_two_processes("lafs/pretrain.py", *TINY, f"output_dir={out}", "optim.grad_accum=2", "optim.epochs=3")
