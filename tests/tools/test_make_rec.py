"""tools.make_rec: image folders and list files to insightface-layout .rec files, and lost .idx files rebuilt."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lafs.data.open import open_dataset
from lafs.data.recordio import RecordIOReader, rebuild_index, unpack_record, write_face_rec
from lafs.errors import DataError
from tools.make_rec import main


def smooth_image(seed: int, size: int = 112) -> np.ndarray:
    """A smooth RGB gradient (JPEG keeps it almost exactly), different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [rng.uniform(40, 120) + rng.uniform(-60, 60) * x + rng.uniform(-60, 60) * y for _ in range(3)]
    return np.clip(np.stack(channels, axis=-1) + 60, 0, 255).astype(np.uint8)


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three identities of PNGs, one of them 80 x 80 (resized on the way), and a 112 x 112 JPEG (copied as is)."""
    root = tmp_path / "faces"
    for identity, count in enumerate((2, 3, 1)):
        for n in range(count):
            write_rgb(root / f"id_{identity}" / f"{n}.png", smooth_image(10 * identity + n, 80 if n == 2 else 112))
    write_rgb(root / "id_0" / "photo.jpg", smooth_image(99))
    return root


def test_folder_round_trip(folder, tmp_path, capsys):
    out = tmp_path / "out" / "faces.rec"
    assert main(["--input", str(folder), "--output", str(out), "--quality", "100"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} + .idx (insightface layout): 7 images, 3 identities; 1 JPEGs copied, 6 ")
    source = open_dataset(folder, landmarks="none")
    rec = open_dataset(out, landmarks="none")
    assert rec.layout == "classic" and rec.num_classes == 3
    assert rec.labels.tolist() == source.labels.tolist() == [0, 0, 0, 1, 1, 1, 2]
    for i in range(len(rec)):
        stored, original = rec[i]["image"].astype(int), source[i]["image"].astype(int)
        assert stored.shape == (112, 112, 3)
        assert np.abs(stored - original).mean() < 1.0 and np.abs(stored - original).max() <= 12, i
    with RecordIOReader(out) as reader:  # image keys follow sorted file names: 0.png, 1.png, photo.jpg
        assert unpack_record(reader.read(3))[1] == (folder / "id_0" / "photo.jpg").read_bytes()


def test_list_file_keeps_labels_and_groups_them(folder, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\nfaces/id_1/0.png,4\nfaces/id_0/0.png,1\nfaces/id_1/1.png,4\n")
    out = tmp_path / "listed.rec"
    assert main(["--input", str(listing), "--output", str(out), "--size", "0"]) == 0
    rec = open_dataset(out, landmarks="none", image_size=None)
    assert rec.labels.tolist() == [1, 4, 4] and rec.num_classes == 5  # labels 0, 2, 3 exist, without images
    expected = [smooth_image(0), smooth_image(10), smooth_image(11)]  # grouped by label, list order within one
    for i, image in enumerate(expected):
        assert np.abs(rec[i]["image"].astype(int) - image).mean() < 2.0, i


def test_rebuild_index_after_losing_it(folder, tmp_path, capsys):
    out = tmp_path / "faces.rec"
    assert main(["--input", str(folder), "--output", str(out)]) == 0
    idx = out.with_suffix(".idx")
    original = idx.read_bytes()
    idx.unlink()
    with pytest.raises(DataError, match=r"python -m tools\.make_rec --rebuild-index"):
        open_dataset(out, landmarks="none")
    capsys.readouterr()

    assert main(["--rebuild-index", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {idx}: 11 records\n"  # 7 images, 3 identity records, the header
    assert idx.read_bytes() == original  # same keys (the header ids), same order, same offsets
    assert open_dataset(out, landmarks="none").labels.tolist() == [0, 0, 0, 1, 1, 1, 2]

    assert main(["--rebuild-index", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {idx}: already exists (pass --overwrite to rebuild it)\n"
    assert main(["--rebuild-index", str(out), "--overwrite"]) == 0


def only_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty folder", "no images in identity sub-folders"),
        ("missing path", "no such file or folder"),
        ("not a list", "not an image folder or a path,label list file"),
        ("undecodable", "does not decode as an image"),
        ("missing listed image", "gone.png: cannot read: No such file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(folder, tmp_path, capsys, case, message):
    source = {
        "empty folder": tmp_path / "empty",
        "missing path": tmp_path / "nowhere",
        "not a list": tmp_path / "faces.json",
        "undecodable": folder,
        "missing listed image": tmp_path / "list.csv",
    }[case]
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    (tmp_path / "faces.json").write_text("{}")
    (folder / "id_2" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (tmp_path / "list.csv").write_text("faces/id_0/0.png,0\nfaces/id_0/gone.png,0\n")
    before = only_files(tmp_path)
    out = tmp_path / "out.rec"
    assert main(["--input", str(source), "--output", str(out)]) == 2
    *progress, err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("images: ") for line in progress)  # progress lines (off a terminal), then the error
    assert err.startswith("error: ") and message in err, err
    assert only_files(tmp_path) == before  # no .rec, .idx or temporary file


def test_outputs_are_not_overwritten_by_default(folder, tmp_path, capsys):
    out = tmp_path / "faces.rec"
    out.with_suffix(".idx").write_text("old")
    assert main(["--input", str(folder), "--output", str(out)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {out.with_suffix('.idx')}: already exists (pass --overwrite to replace it)\n"
    )
    assert main(["--input", str(folder), "--output", str(out), "--overwrite"]) == 0
    assert len(open_dataset(out, landmarks="none")) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "x"], "--output must name the .rec to write"),
        (["--input", "x", "--output", "x.bin"], "--output must name the .rec to write"),
        (["--rebuild-index", "x.rec", "--output", "y.rec"], "takes no --output"),
        (["--rebuild-index", "missing.rec"], "missing.rec: no such file"),
    ],
)
def test_option_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_write_face_rec_layout_and_checks(tmp_path):
    png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    assert write_face_rec(tmp_path / "a.rec", [(png, 1), (png, 1), (png, 3)], num_classes=5) == (3, 5)
    rec = open_dataset(tmp_path / "a.rec", landmarks="none", image_size=None)
    assert rec.layout == "classic" and rec.labels.tolist() == [1, 1, 3] and rec.num_classes == 5
    with RecordIOReader(tmp_path / "a.rec") as reader:
        header, payload = unpack_record(reader.read(0))
        assert header.label == (4.0, 9.0) and payload == b""  # images 1..3, identities 4..8
        assert [unpack_record(reader.read(k))[0].label for k in range(4, 9)] == [(1, 1), (1, 3), (3, 3), (3, 4), (4, 4)]
    original = (tmp_path / "a.idx").read_bytes()
    rebuild_index(tmp_path / "a.rec")
    assert (tmp_path / "a.idx").read_bytes() == original

    for items, num_classes, message in [
        ([(png, 1), (png, 0)], None, "grouped by class, got 0 after 1"),
        ([(png, -1)], None, "negative label"),
        ([(png, 2)], 2, "label 2 >= num_classes 2"),
        ([], None, "no images"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_face_rec(tmp_path / "bad.rec", iter(items), num_classes=num_classes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx", "a.rec"]


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "--rebuild-index" in capsys.readouterr().out


def test_rebuild_rec_index_keeps_an_existing_index(tmp_path):
    from lafs.data.make_rec import rebuild_rec_index

    rec = tmp_path / "x.rec"
    write_face_rec(rec, iter([(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), 0)]))
    with pytest.raises(DataError, match="already exists"):
        rebuild_rec_index(rec)
    before = rec.with_suffix(".idx").read_text()
    assert rebuild_rec_index(rec, overwrite=True) == (rec.with_suffix(".idx"), len(before.splitlines()))
    assert rec.with_suffix(".idx").read_text() == before
