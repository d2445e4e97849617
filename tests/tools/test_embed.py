"""tools.embed never replaces a file it was not told to (issue 14): an existing output needs --overwrite."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import timm

import lafs  # noqa: F401  (registers the encoders with timm)
from lafs.export import save_encoder
from tests.conftest import write_face_folder
from tools.embed import main


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = timm.create_model("lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=2, num_heads=2)
    return save_encoder(model, tmp_path_factory.mktemp("model") / "encoder")


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_existing_output_needs_overwrite(tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faces, _ = write_face_folder(tmp_path / "faces", identities=1, per_identity=2)
    output = tmp_path / "mine.npy"
    np.save(output, np.arange(3))
    args = ["--input", str(faces), "--model", str(encoder), "--output", str(output), "--device", "cpu"]
    assert main(args) == 2
    assert "pass --overwrite" in error_line(capsys)
    np.testing.assert_array_equal(np.load(output), np.arange(3))
    old = os.umask(0o022)
    try:
        assert main([*args, "--overwrite"]) == 0
    finally:
        os.umask(old)
    assert np.load(output).shape == (2, 32)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()} == {
        "mine.npy": 0o644,
        "mine.index.csv": 0o644,
    }


def test_output_that_is_a_folder(tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faces, _ = write_face_folder(tmp_path / "faces", identities=1, per_identity=1)
    (tmp_path / "out.npy").mkdir()
    args = ["--input", str(faces), "--model", str(encoder), "--output", str(tmp_path / "out.npy"), "--overwrite"]
    assert main(args) == 2
    assert "is a folder" in error_line(capsys)
    assert list((tmp_path / "out.npy").iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_no_temporary(
    tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fills_the_disk(file: Any, array: np.ndarray) -> None:  # half the array fits, then the disk is full
        file.write(array.tobytes()[: array.nbytes // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", fills_the_disk)
    faces, _ = write_face_folder(tmp_path / "faces", identities=1, per_identity=2)
    out = tmp_path / "out"
    out.mkdir()
    args = ["--input", str(faces), "--model", str(encoder), "--output", str(out / "e.npy"), "--device", "cpu"]
    assert main(args) == 2
    assert error_line(capsys) == "error: No space left on device\n"
    assert list(out.iterdir()) == []  # the half-written .e.npy.<token>.tmp went too


def test_an_image_too_small_to_hold_a_face_is_a_failure(
    tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "faces").mkdir()
    cv2.imwrite(str(tmp_path / "faces" / "dot.jpg"), np.full((1, 1, 3), 128, np.uint8))
    args = ["--input", str(tmp_path / "faces"), "--model", str(encoder), "--output", str(tmp_path / "e.npy")]
    assert main([*args, "--device", "cpu"]) == 2
    assert error_line(capsys).endswith(
        "dot.jpg: not an aligned crop: 1x1 is too small to hold a face (at least 16 px)); nothing written\n"
    )


def test_file_names_that_are_not_utf8_are_listed_byte_for_byte(tmp_path: Path, encoder: Path) -> None:
    faces, _ = write_face_folder(tmp_path / "faces", identities=1, per_identity=1)
    odd = os.fsencode(faces) + b"/caf\xe9"  # a Latin-1 name: not UTF-8 (was a UnicodeEncodeError traceback)
    os.rename(os.fsencode(next(faces.iterdir())), odd)
    args = ["--input", str(faces), "--model", str(encoder), "--output", str(tmp_path / "e.npy"), "--device", "cpu"]
    assert main(args) == 0
    assert odd in (tmp_path / "e.index.csv").read_bytes()
