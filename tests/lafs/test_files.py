"""lafs.files: output folders that never lose what they did not write (issue 14)."""

from __future__ import annotations

import os

import pytest
import torch

from lafs.errors import DataError
from lafs.files import MANIFEST, output_folder, save_weights_folder, write_atomic


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path):
    with output_folder(tmp_path / "out", "kind") as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), output_folder(tmp_path / "out", "kind") as staging:
        (staging / "a.txt").write_text("second")
        raise RuntimeError("parity check failed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "a.txt"]
    assert (tmp_path / "out" / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), output_folder(tmp_path / "new", "kind"):
        raise RuntimeError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the folder it created went again


def test_a_folder_of_another_kind_is_refused(tmp_path):
    """Training writes run_dir/predictor and run_dir/encoder through the same rule: a foreign folder survives."""
    folder = tmp_path / "predictor"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="not empty and not a lafs-test output"):
        save_weights_folder(torch.nn.Linear(2, 2), folder, {"format": "lafs-test"})
    assert [p.name for p in folder.iterdir()] == ["data.csv"]
    save_weights_folder(torch.nn.Linear(2, 2), tmp_path / "mine", {"format": "lafs-test"})
    save_weights_folder(torch.nn.Linear(2, 2), tmp_path / "mine", {"format": "lafs-test"})  # its own: replaced


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.txt", "x")
        save_weights_folder(torch.nn.Linear(2, 2), tmp_path / "weights", {"format": "lafs-test"})
    finally:
        os.umask(old)
    files = [tmp_path / "a.txt", *(p for p in (tmp_path / "weights").iterdir())]
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == dict.fromkeys(
        ["a.txt", "model.safetensors", "config.json", MANIFEST], 0o666 & ~umask
    )
