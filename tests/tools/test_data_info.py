"""tools.data_info: counts, image sizes and the RGB / BGR colour check for every dataset format."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from lafs.data.images import encode_jpeg
from lafs.data.info import colour_verdict, sample_indices
from lafs.data.pairs import write_bin
from lafs.data.recordio import RecordHeader, RecordIOWriter, pack_record, write_face_rec
from tools.data_info import main

LOOKS_BGR = "looks BGR: pass --bgr / data.bgr=true"


def skin(seed: int, size: int = 112) -> np.ndarray:
    """A skin-toned RGB image (red well above blue, as in face crops) with some texture."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 150, 120]) + rng.uniform(-20, 20, size=3)
    noise = rng.normal(0, 12, size=(size, size, 1))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_rec(path: Path, labels: list[int], bgr: bool = False, broken: int | None = None) -> Path:
    """Skin images as a .rec (channels swapped in storage if ``bgr``); image ``broken`` does not decode."""
    items = [
        (b"not an image" if i == broken else encode_jpeg(skin(i), 95, bgr=bgr), label) for i, label in enumerate(labels)
    ]
    write_face_rec(path, items)
    return path


def table(text: str) -> dict[str, str]:
    """The printed ``name  value`` table as a dict (names may hold single spaces)."""
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.strip().splitlines())


def info(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, str]:
    assert main(list(args)) == 0
    return table(capsys.readouterr().out)


def test_rec_counts_and_colours(tmp_path, capsys):
    rec = write_rec(tmp_path / "faces.rec", [0, 0, 0, 1, 2, 2])
    rows = info(capsys, str(rec))
    assert rows["path"] == str(rec)
    assert rows["format"].startswith(".rec, classic layout (insightface")
    assert rows["records"] == "6 images"
    assert rows["identities"] == "3 (images each: min 1, median 2, max 3)"
    assert rows["sampled"] == "6 images, evenly spread"
    assert rows["image size"] == "112x112 (6)"
    mean_r, mean_b = map(float, rows["mean R / B"].split(" / "))
    assert mean_r > mean_b + 50
    assert rows["colour"] == "R > B: looks RGB, as it should"
    assert rows["bad records"] == "0 of 6 sampled"


def test_bgr_stored_rec_is_flagged(tmp_path, capsys):
    rec = write_rec(tmp_path / "bgr.rec", [0, 1, 1, 2], bgr=True)
    assert info(capsys, str(rec))["colour"] == f"B > R: {LOOKS_BGR}"
    rows = info(capsys, "--input", str(rec), "--bgr")
    assert rows["colour"] == "R > B: --bgr looks right" and rows["mean R / B"].endswith("(read with --bgr)")
    plain = write_rec(tmp_path / "rgb.rec", [0, 1])
    assert info(capsys, str(plain), "--bgr")["colour"] == "B > R with --bgr: looks RGB: drop --bgr / data.bgr=false"


def test_bad_records_are_counted_in_the_sample(tmp_path, capsys):
    rec = write_rec(tmp_path / "broken.rec", [0, 0, 1, 1, 1], broken=2)
    rows = info(capsys, str(rec))
    assert rows["bad records"] == "1 of 5 sampled" and rows["image size"] == "112x112 (4)"
    rows = info(capsys, str(rec), "--sample", "2")  # the first and the last record only
    assert rows["sampled"] == "2 images, evenly spread" and rows["bad records"] == "0 of 2 sampled"


def test_flat_rec_with_a_damaged_label_is_described(tmp_path, capsys):
    rec = tmp_path / "flat.rec"
    with RecordIOWriter(rec) as writer:
        for key in range(6):
            record = pack_record(RecordHeader(0, float(key % 2), key, 0), encode_jpeg(skin(key)))
            writer.write(key, record[:20] if key == 3 else record)  # record 3: shorter than its header
    rows = info(capsys, str(rec))
    assert rows["format"].startswith(".rec, flat layout")
    assert rows["records"] == "5 images (1 more left out: its label does not read)"
    assert rows["bad records"] == "0 of 5 sampled"


def test_folder_and_list_file(tmp_path, capsys):
    root = tmp_path / "faces"
    for identity, count in (("anna", 2), ("bob", 1)):
        (root / identity).mkdir(parents=True)
        for n in range(count):
            cv2.imwrite(str(root / identity / f"{n}.png"), cv2.cvtColor(skin(n, size=96), cv2.COLOR_RGB2BGR))
    rows = info(capsys, str(root))
    assert rows["format"] == "image folder" and rows["records"] == "3 images"
    assert rows["identities"].startswith("2 ") and rows["image size"] == "96x96 (3)"
    assert rows["colour"].startswith("R > B")

    listing = tmp_path / "faces.csv"
    listing.write_text("faces/anna/0.png,0\nfaces/bob/0.png,2\n")
    rows = info(capsys, "--input", str(listing))
    assert rows["format"] == "path,label list file" and rows["records"] == "2 images"
    assert rows["identities"] == "2 (images each: min 1, median 1, max 1); 3 classes, 1 without images"


def test_bin_pairs(tmp_path, capsys):
    images = [skin(i) for i in range(6)]
    write_bin(tmp_path / "set.bin", [(images[0], images[1]), (images[2], images[3]), (images[4], images[5])], [1, 0, 0])
    rows = info(capsys, str(tmp_path / "set.bin"))
    assert rows["format"] == ".bin pair set (insightface)" and rows["records"] == "6 images"
    assert rows["pairs"] == "3 (1 same, 2 different)"
    assert rows["colour"].startswith("R > B") and rows["bad records"] == "0 of 6 sampled"


def test_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nothing.rec")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nothing.rec'}: no such file or folder\n"
    for args in ([], ["a.rec", "--input", "b.rec"]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2


def test_sample_indices_and_verdicts():
    assert sample_indices(10, 3) == [0, 4, 9]
    assert sample_indices(3, 200) == [0, 1, 2]
    assert colour_verdict(120.0, 80.0, bgr=False).startswith("R > B")
    assert colour_verdict(80.0, 120.0, bgr=False) == f"B > R: {LOOKS_BGR}"
    assert colour_verdict(100.0, 101.0, bgr=False).startswith("R ~ B: no verdict")


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "--bgr" in capsys.readouterr().out
