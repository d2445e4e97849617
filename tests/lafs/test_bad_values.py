"""Values that used to crash, hang or allocate without bound are one-line errors (or a renumbering, said aloud)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lafs.tasks.pretrain
from lafs.cli import OUT_OF_MEMORY
from lafs.config import load_config
from lafs.data.folder import read_list_file
from lafs.errors import ConfigError, DataError
from lafs.pretrain import main as pretrain
from lafs.tasks.pretrain import PretrainConfig
from tests.conftest import assert_bad_value_is_one_line
from tests.lafs.test_pretrain import TINY


@pytest.mark.parametrize(
    ("value", "key"),
    [("seed=4294967296", "seed"), ("num_workers=100000", "num_workers"), ("threads=100000", "threads")],
)
def test_run_values_beyond_any_machine(tmp_path: Path, capsys: pytest.CaptureFixture, value: str, key: str) -> None:
    assert_bad_value_is_one_line(pretrain, [*TINY, value], tmp_path / "run", key, capsys)


def test_a_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("optim:\n  lr: 0.1  # \xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte \d+: invalid continuation byte\)"):
        load_config(PretrainConfig, path)


@pytest.mark.parametrize("label", ["²", "99999999999999999999999", "-1", "2147483648"])
def test_list_labels_that_are_no_class_number(tmp_path: Path, label: str) -> None:
    (tmp_path / "list.csv").write_text(f"a.png,0\nb.png,{label}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"list.csv:2: expected 'path,label' with an integer label in \[0, 2147"):
        read_list_file(tmp_path / "list.csv")


def test_sparse_labels_are_renumbered_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Label 50,000,000 would size a classifier of 50 million rows (25.6 GB at 128 features) for 3 people.
    (tmp_path / "list.csv").write_text("a.png,7\nb.png,50000000\nc.png,7\nd.png,3\n")
    with caplog.at_level("WARNING", logger="lafs.data"):
        _, labels = read_list_file(tmp_path / "list.csv")
    assert labels.tolist() == [1, 2, 1, 0] and labels.dtype == np.int64
    assert "3 classes labelled up to 50000000: renumbered 0 .. 2" in caplog.text
    (tmp_path / "dense.csv").write_text("a.png,0\nb.png,2\n")  # a gap or two is fine: kept as given
    assert read_list_file(tmp_path / "dense.csv")[1].tolist() == [0, 2]


def test_a_billion_laughs_under_a_key_is_one_short_line(tmp_path: Path) -> None:
    # 12 levels of 9 aliases: 9**12 strings if ever expanded; the error shows a few of them.
    levels = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    path = tmp_path / "laughs.yaml"
    path.write_text("optim:\n  lr: [" + ", ".join(levels) + "]\n")
    with pytest.raises(ConfigError) as error:
        load_config(PretrainConfig, path)
    assert str(error.value).startswith("optim.lr: expected float, got [['lol', 'lol', 'lol', 'lol', ...], [[...]")
    assert len(str(error.value)) < 400


def _png(width: int, height: int) -> bytes:
    """A grey PNG of ``width`` x ``height`` written by hand: all zeros compress to almost nothing."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\0" * ((width + 1) * height), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("side", "message"), [(12000, "12000 x 12000 pixels is more than 120 million"), (20000, "exceeds limit")]
)
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path, side: int, message: str) -> None:
    from lafs.data.images import UndecodableImage, read_image_file
    from lafs.photos import read_photo

    path = tmp_path / "bomb.png"
    path.write_bytes(_png(side, side))  # a few hundred kB that would decode to gigabytes
    assert path.stat().st_size < 1_000_000
    for read in (read_image_file, read_photo):
        with pytest.raises(UndecodableImage, match=message):
            read(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"depth": 100000}, "model_args depth=100000 is out of range"),
        ({"embed_dim": 10_000_000}, "model_args embed_dim=10000000 is out of range"),
        ({"num_heads": 0}, "weights do not fit config.json"),
        ({"depth": 5}, "config.json describes"),  # a model of other size than the weights: refused before building
    ],
)
def test_a_crafted_config_json_is_refused_before_allocating(tmp_path: Path, change: dict, message: str) -> None:
    import json

    import timm

    from lafs.export import load_encoder, save_encoder

    model = timm.create_model("lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=2, num_heads=2)
    folder = save_encoder(model, tmp_path / "encoder")
    config = json.loads((folder / "config.json").read_text())
    config["model_args"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=message):
        load_encoder(folder)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("dino.out_dim=100000000000", "dino.out_dim"),
        ("synthetic.num_identities=1000000000", "synthetic.num_identities"),
    ],
)
def test_sizes_beyond_any_machine_are_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture, value: str, key: str
) -> None:
    # Both allocated terabytes (a 1e11-prototype head) or 64 GB (a billion synthetic identities) after the run
    # directory was written, and ended in a RuntimeError traceback.
    assert_bad_value_is_one_line(pretrain, [*TINY, value], tmp_path / "run", key, capsys)


def test_a_failed_allocation_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Within every bound, still more than the machine has: torch's allocator raises a RuntimeError, not MemoryError.
    def exhausted(*args: object, **kwargs: object) -> None:
        torch.empty(2**62, dtype=torch.uint8)

    monkeypatch.setattr(lafs.tasks.pretrain.PretrainTask, "setup", exhausted)
    assert pretrain([*TINY, f"output_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"error: {OUT_OF_MEMORY}: you tried to allocate {2**62} bytes"
