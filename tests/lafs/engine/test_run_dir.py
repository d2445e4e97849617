"""A run directory belongs to one run: foreign folders refused, one run at a time, crashed runs leave no lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lafs.engine.run_dir import LOCK_FILE, check_run_directory, claim_run_directory
from lafs.engine.run_log import read_log
from lafs.errors import ConfigError
from lafs.pretrain import main as pretrain
from tests.lafs.test_pretrain import TINY


def test_a_users_folder_is_refused_and_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my: notes\n")
    (folder / "log.jsonl").write_text("mine\n")
    assert pretrain([*TINY, f"output_dir={folder}", "max_steps=1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: output_dir {folder}: a folder that is not empty") and error.count("\n") == 1
    assert (folder / "config.yaml").read_text() == "my: notes\n" and (folder / "log.jsonl").read_text() == "mine\n"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "log.jsonl"]


def test_a_run_directory_is_its_own_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=1"]) == 0
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=2"]) == 0  # resumes into its own directory
    check_run_directory(out)
    check_run_directory(tmp_path / "new")  # missing: fine


def test_two_runs_at_once_the_second_is_refused(tmp_path: Path) -> None:
    held = claim_run_directory(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=r"another run \(pid \d+ on .*\) is writing into it"):
            claim_run_directory(tmp_path / "run")
    finally:
        held.close()
    claim_run_directory(tmp_path / "run").close()  # released: free again


def test_a_crashed_run_leaves_no_stale_lock(tmp_path: Path) -> None:
    # A process that takes the lock and dies without a word (kill -9): the OS releases its flock.
    code = f"from pathlib import Path; from lafs.engine.run_dir import claim_run_directory; import os; " \
           f"claim_run_directory(Path({str(tmp_path / 'run')!r})); os._exit(9)"  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 9
    assert (tmp_path / "run" / LOCK_FILE).is_file()
    claim_run_directory(tmp_path / "run").close()


def test_a_fresh_start_over_an_earlier_run_needs_replace(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=4"]) == 0
    capsys.readouterr()
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=2", "resume=''"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: output_dir {out} holds a run with checkpoints up to step_00000004; ")
    assert "pass replace=true" in error and error.count("\n") == 1
    assert pretrain([*TINY, f"output_dir={out}", "max_steps=2", "resume=''", "replace=true"]) == 0
    kept = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(kept) == 1 and [p.name for p in sorted((kept[0] / "checkpoints").iterdir())][-1] == "step_00000004"
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step_00000002"]  # the new run's own
    assert [r["step"] for r in read_log(out)] == [1, 2]  # one run's log, not two mixed
