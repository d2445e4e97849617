import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lafs.data.pairs import load_bin
from tools.make_bin import main


def write_image(path, value: int, size: int = 40) -> None:
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[..., 0] = value  # red channel only, to check the colour order survives
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def pairs_dir(tmp_path):
    (tmp_path / "faces").mkdir()
    for i in range(4):
        write_image(tmp_path / "faces" / f"{i}.png", 50 * i + 40)
    return tmp_path


def test_builds_a_bin(pairs_dir, capsys):
    pairs = pairs_dir / "pairs.txt"
    pairs.write_text("# a b same\nfaces/0.png faces/1.png 1\n\nfaces/2.png faces/3.png 0\nfaces/0.png faces/3.png 0\n")
    out = pairs_dir / "out" / "set.bin"
    assert main(["--input", str(pairs), "--output", str(out), "--image-size", "64"]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith(f"wrote {out}: 3 pairs (1 same, 2 different), ") and summary.endswith(" bytes")
    assert "\n" not in summary
    images, issame = load_bin(out)
    assert issame.tolist() == [True, False, False]
    assert [image.shape for image in images] == [(64, 64, 3)] * 6
    red = [image[..., 0].mean() for image in images]
    np.testing.assert_allclose(red, [40, 90, 140, 190, 40, 190], atol=3)
    assert max(image[..., 1:].max() for image in images) < 10


def test_image_size_zero_keeps_sizes(pairs_dir):
    write_image(pairs_dir / "faces" / "big.png", 100, size=70)
    (pairs_dir / "pairs.txt").write_text("faces/0.png faces/big.png 1\n")
    out = pairs_dir / "set.bin"
    assert main(["--input", str(pairs_dir / "pairs.txt"), "--output", str(out), "--image-size", "0"]) == 0
    assert [image.shape for image in load_bin(out)[0]] == [(40, 40, 3), (70, 70, 3)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("faces/0.png faces/1.png", "or LFW's 'name n1 n2' / 'name1 n1 name2 n2', got 2 fields"),
        ("faces/0.png faces/1.png 2", "label must be 1/true/same or 0/false/different"),
        ("faces/0.png faces/nope.png 1", "no such image"),
        ("faces/0.png faces/junk.png 0", "does not decode as an image"),
    ],
)
def test_bad_lines(pairs_dir, capsys, line, message):
    (pairs_dir / "faces" / "junk.png").write_bytes(b"not a png")
    pairs = pairs_dir / "pairs.txt"
    pairs.write_text(f"faces/0.png faces/1.png 1\n# comment\n{line}\n")
    out = pairs_dir / "set.bin"
    assert main(["--input", str(pairs), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {pairs}:3: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_pairs_file(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "none.txt"), "--output", str(tmp_path / "set.bin")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.txt'}: no such file\n"


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "path_a path_b 1|0" in capsys.readouterr().out


def test_existing_output_needs_overwrite(pairs_dir, capsys):
    pairs = pairs_dir / "pairs.txt"
    pairs.write_text("faces/0.png faces/1.png 1\n")
    out = pairs_dir / "mine.bin"
    out.write_bytes(b"not ours")
    assert main(["--input", str(pairs), "--output", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out}: already exists (pass --overwrite to replace it)\n"
    assert out.read_bytes() == b"not ours"
    assert main(["--input", str(pairs), "--output", str(out), "--overwrite"]) == 0
    assert load_bin(out)[1].tolist() == [True]


@pytest.mark.parametrize("output", [".", "faces", "faces/.."])
def test_output_that_is_a_folder(pairs_dir, capsys, monkeypatch, output):
    monkeypatch.chdir(pairs_dir)
    (pairs_dir / "pairs.txt").write_text("faces/0.png faces/1.png 1\n")
    before = sorted(p.name for p in pairs_dir.rglob("*"))
    assert main(["--input", "pairs.txt", "--output", output, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is a folder" in err, err
    assert sorted(p.name for p in pairs_dir.rglob("*")) == before


# -- --split: the development protocol ----------------------------------------------------------------------------


def write_identity_folder(root, identities: int = 8, frontal: int = 4, profile: int = 2) -> None:
    """CFP-style names; identity k's images are grey at 20 * k + 10 (so a pair's identities can be read back)."""
    for k in range(identities):
        folder = root / f"person_{k:02d}"
        folder.mkdir(parents=True)
        names = [f"frontal_{i:02d}" for i in range(frontal)] + [f"profile_{i:02d}" for i in range(profile)]
        for name in names:
            cv2.imwrite(str(folder / f"{name}.png"), np.full((112, 112, 3), 20 * k + 10, np.uint8))


def test_split_holds_identities_aside_and_writes_frontal_and_profile_pairs(tmp_path, capsys):
    write_identity_folder(tmp_path / "faces")
    out = tmp_path / "dev"
    argv = ["--split", str(tmp_path / "faces"), "--output", str(out), "--held-aside", "3", "--pairs", "20"]
    assert main(argv) == 0
    assert "5 training identities (30 images), 3 held aside (18 images)" in capsys.readouterr().out
    split = json.loads((out / "split.json").read_text())
    held = set(split["held_aside_identities"])
    assert len(held) == 3 and held.isdisjoint(split["training_identities"])
    train = (out / "train.csv").read_text().splitlines()[1:]
    assert {Path(row.split(",")[0]).parent.name for row in train} == set(split["training_identities"])
    assert sorted({int(row.split(",")[1]) for row in train}) == [0, 1, 2, 3, 4]  # contiguous labels
    for name in ("held_aside_ff", "held_aside_fp"):
        images, issame = load_bin(out / f"{name}.bin")
        assert issame.tolist() == [True, False] * 10  # alternating: every contiguous fold holds both
        identity = [(int(image[0, 0, 0]) - 10) // 20 for image in images]
        assert all((identity[2 * i] == identity[2 * i + 1]) == same for i, same in enumerate(issame))
        assert {f"person_{k:02d}" for k in identity} <= held
    again = tmp_path / "again"
    assert main(["--split", str(tmp_path / "faces"), "--output", str(again), "--held-aside", "3", "--pairs", "20"]) == 0
    assert (again / "held_aside_fp.bin").read_bytes() == (out / "held_aside_fp.bin").read_bytes()  # fixed split


def test_split_refuses_odd_pair_counts_and_existing_outputs(tmp_path, capsys):
    write_identity_folder(tmp_path / "faces", identities=4)
    argv = ["--split", str(tmp_path / "faces"), "--output", str(tmp_path / "dev"), "--held-aside", "2"]
    assert main([*argv, "--pairs", "21"]) == 2
    assert "--pairs must be an even number" in capsys.readouterr().err
    assert main([*argv, "--pairs", "20"]) == 0
    assert main([*argv, "--pairs", "20"]) == 2  # written once; --overwrite to replace
    assert "already exists" in capsys.readouterr().err


SHARED_FACES = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces15"


@pytest.mark.skipif(not SHARED_FACES.is_dir(), reason="../shared/data/faces15 is not here (a fresh clone)")
def test_split_of_real_faces_and_lbp_beats_chance_on_them(tmp_path):
    """Real crops (no profiles: a frontal-frontal set only): the split and the LBP floor the recipe must clear."""
    from lafs.evaluation.baselines import describe
    from lafs.evaluation.verification import pair_similarities, verification_report

    out = tmp_path / "dev"
    assert main(["--split", str(SHARED_FACES), "--output", str(out), "--held-aside", "5", "--pairs", "200"]) == 0
    assert not (out / "held_aside_fp.bin").exists()
    images, issame = load_bin(out / "held_aside_ff.bin")
    report = verification_report(pair_similarities(describe(images, "lbp")), issame)
    assert report["auc"] > 0.55
