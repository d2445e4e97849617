"""Pair lists as users have them (lafs.data.pair_lists): our text format, CSV exports with headers, LFW's pairs.txt."""

import pytest

from lafs.data.pair_lists import read_pairs_file
from lafs.errors import DataError


def test_read_pairs_file(tmp_path):
    (tmp_path / "pairs.txt").write_text("# header\n\na.jpg  b.jpg 1\n/abs/c.png\td.png 0  # trailing\n")
    assert read_pairs_file(tmp_path / "pairs.txt") == [
        (tmp_path / "a.jpg", tmp_path / "b.jpg", True),
        (tmp_path.joinpath("/abs/c.png"), tmp_path / "d.png", False),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [("a.jpg b.jpg", "expected 'path_a path_b 1|0', .* got 2 fields"), ("a.jpg b.jpg yes", "label must be 1")],
)
def test_read_pairs_file_bad_lines(tmp_path, line, message):
    (tmp_path / "pairs.txt").write_text(f"a.jpg b.jpg 0\n# comment\n{line}\n")
    with pytest.raises(DataError, match=f"pairs.txt:3: {message}"):
        read_pairs_file(tmp_path / "pairs.txt")


def test_read_a_csv_export_with_its_header(tmp_path):
    text = '\ufeffimage_a,image_b,same\nimg38.jpg,img39.jpg,1\n"my photo.jpg",x.png,False\n'  # BOM, header, quotes
    (tmp_path / "pairs.csv").write_text(text)
    assert read_pairs_file(tmp_path / "pairs.csv") == [
        (tmp_path / "img38.jpg", tmp_path / "img39.jpg", True),
        (tmp_path / "my photo.jpg", tmp_path / "x.png", False),
    ]


def test_read_lfws_own_pairs_txt(tmp_path):
    (tmp_path / "pairs.txt").write_text("10\t300\nAbel_Pacheco\t1\t4\nAbdel_Madi_Shabneh\t1\tDean_Barker\t11\n")
    assert read_pairs_file(tmp_path / "pairs.txt") == [
        (tmp_path / "Abel_Pacheco/Abel_Pacheco_0001.jpg", tmp_path / "Abel_Pacheco/Abel_Pacheco_0004.jpg", True),
        (tmp_path / "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg", tmp_path / "Dean_Barker/Dean_Barker_0011.jpg",
         False),
    ]  # fmt: skip


def test_a_bad_first_line_is_no_header(tmp_path):
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg yes\n")
    with pytest.raises(DataError, match=r"pairs.txt:1: label must be 1"):
        read_pairs_file(tmp_path / "pairs.txt")


def test_lfw_pairs_without_the_counts_line_and_hashes_in_csv_names(tmp_path):
    (tmp_path / "pairs.txt").write_text("Abel_Pacheco 1 4\n")  # no counts line: the first pair is no header
    assert read_pairs_file(tmp_path / "pairs.txt") == [
        (tmp_path / "Abel_Pacheco/Abel_Pacheco_0001.jpg", tmp_path / "Abel_Pacheco/Abel_Pacheco_0004.jpg", True)
    ]
    (tmp_path / "pairs.csv").write_text("img#1.jpg,x.jpg,1\n")  # in CSV a # is part of a name
    assert read_pairs_file(tmp_path / "pairs.csv") == [(tmp_path / "img#1.jpg", tmp_path / "x.jpg", True)]
