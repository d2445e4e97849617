"""RecordIO without MXNet: dmlc framing pinned byte for byte, both dataset layouts, corrupt input, workers."""

from __future__ import annotations

import logging
import os
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lafs.data import recordio
from lafs.data.images import encode_jpeg
from lafs.data.recordio import (
    FaceRecordDataset,
    RecordHeader,
    RecordIOReader,
    RecordIOWriter,
    pack_record,
    rebuild_index,
    scan_offsets,
    unpack_record,
    write_face_rec,
    write_index,
)
from lafs.errors import DataError
from tests.lafs.data.common import garble, textured

M = bytes.fromhex("0a23d7ce")  # 0xced7230a little-endian


@pytest.fixture(autouse=True, params=["parsed", "mapped"])
def index_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Every test twice: the index parsed into memory (small files), and cached + memory-mapped (large ones)."""
    if request.param == "mapped":
        monkeypatch.setattr(recordio, "MAP_INDEX_FROM_BYTES", 0)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))  # never the real home's
    return str(request.param)


def lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", cflag << 29 | length)


def png(rgb: tuple[int, int, int], size: int = 6) -> bytes:
    """A solid-colour PNG (lossless, so colours can be checked exactly)."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = rgb[::-1]  # cv2 encodes BGR arrays
    return cv2.imencode(".png", image)[1].tobytes()


def colour(i: int) -> tuple[int, int, int]:
    return (10 * i % 256, 255 - 7 * i % 256, 3 * i % 256)


def write_classic(
    path: Path, images_per_identity: list[int], header_last: bool = False, header: tuple[float, float] | None = None
) -> list[int]:
    """insightface layout: images 1.., identity records, record 0; returns the class of every image key.

    ``header_last`` writes record 0 after the rest and gives images ``[class, aligned]`` label pairs, as
    insightface's face2rec2 does. ``header`` replaces record 0's (first identity key, end) pair.
    """
    labels = [c for c, n in enumerate(images_per_identity) for _ in range(n)]
    first = len(labels) + 1
    pair = header or (first, first + len(images_per_identity))
    header0 = pack_record(RecordHeader(2, (float(pair[0]), float(pair[1])), 0, 0), b"")
    with RecordIOWriter(path) as writer:
        if not header_last:
            writer.write(0, header0)
        for key, label in enumerate(labels, 1):
            value = (float(label), 1.0) if header_last else float(label)
            writer.write(key, pack_record(RecordHeader(0, value, key, 0), png(colour(key))))
        start = 1
        for offset, n in enumerate(images_per_identity):
            identity = pack_record(RecordHeader(2, (float(start), float(start + n)), first + offset, 0), b"")
            writer.write(first + offset, identity)
            start += n
        if header_last:
            writer.write(0, header0)
    return labels


def write_flat(path: Path, labels: list[int], label_arrays: bool = False) -> None:
    """im2rec layout: every record an image, key == header id."""
    with RecordIOWriter(path) as writer:
        for key, label in enumerate(labels):
            value = (float(label), 0.5) if label_arrays else float(label)
            writer.write(key, pack_record(RecordHeader(0, value, key, 0), png(colour(key))))


# --- image headers -------------------------------------------------------------------------------------------------


def test_header_round_trip_scalar_and_label_array():
    header, payload = unpack_record(pack_record(RecordHeader(0, 3.0, 7, 1), b"jpeg"))
    assert header == RecordHeader(0, 3.0, 7, 1)
    assert payload == b"jpeg"
    packed = pack_record(RecordHeader(0, (1.0, 2.5, -4.0), 9, 0), b"img")  # flag follows the label, as in MXNet
    assert packed[:24] == struct.pack("<IfQQ", 3, 0.0, 9, 0)
    assert unpack_record(packed) == (RecordHeader(3, (1.0, 2.5, -4.0), 9, 0), b"img")


def test_unpack_rejects_short_records():
    with pytest.raises(ValueError):
        unpack_record(b"\0" * 23)
    with pytest.raises(ValueError):
        unpack_record(struct.pack("<IfQQ", 2, 0.0, 0, 0) + b"\0\0\0\0")  # says 2 labels, holds 1


# --- framing -------------------------------------------------------------------------------------------------------


def test_single_record_bytes_pinned(tmp_path):
    record = pack_record(RecordHeader(0, 3.0, 7, 0), b"abcde")  # 29 bytes
    with RecordIOWriter(tmp_path / "a.rec") as writer:
        writer.write(0, record)
    expected = (
        bytes.fromhex("0a23d7ce")  # magic
        + bytes.fromhex("1d000000")  # cflag 0, length 29
        + bytes.fromhex("000000000000404007000000000000000000000000000000")  # flag 0, 3.0f, id 7, id2 0
        + b"abcde"
        + b"\0\0\0"  # pad to 4
    )
    assert (tmp_path / "a.rec").read_bytes() == expected
    assert (tmp_path / "a.idx").read_text() == "0\t0\n"


def test_magic_inside_payload_is_split_like_dmlc(tmp_path):
    # Magic at aligned 0, 8, 12 (cut out) and at unaligned 17 (kept in the data).
    payload = M + b"abcd" + M + M + b"z" + M + b"q"
    expected = (
        M + lrec(1, 0)  # first part: empty
        + M + lrec(2, 4) + b"abcd"
        + M + lrec(2, 0)  # two magics in a row: empty middle part
        + M + lrec(3, 6) + b"z" + M + b"q" + b"\0\0"
    )  # fmt: skip
    tail_case = b"abcd" + M  # magic in the last aligned word: empty, unpadded last part
    with RecordIOWriter(tmp_path / "m.rec") as writer:
        writer.write(0, payload)
        writer.write(1, tail_case)
        writer.write(2, b"xy" + M + b"uv")  # unaligned only: one whole record
    data = (tmp_path / "m.rec").read_bytes()
    second = expected + M + lrec(1, 4) + b"abcd" + M + lrec(3, 0)
    assert data == second + M + lrec(0, 8) + b"xy" + M + b"uv"
    with RecordIOReader(tmp_path / "m.rec") as reader:
        assert [reader.read(k) for k in (0, 1, 2)] == [payload, tail_case, b"xy" + M + b"uv"]
        with pytest.raises(KeyError):
            reader.read(3)
        assert reader.read_at(0) == (payload, len(expected))
    assert scan_offsets(tmp_path / "m.rec") == [0, len(expected), len(second)]


def test_random_records_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for n in range(40):
        words = rng.integers(0, 2**32, size=n // 4 + 2, dtype=np.uint32)
        words[rng.random(words.size) < 0.3] = recordio.MAGIC
        records.append(words.tobytes()[rng.integers(0, 3) : n + rng.integers(0, 3)])
    with RecordIOWriter(tmp_path / "r.rec") as writer:
        for key, record in enumerate(records):
            writer.write(key, record)
    with RecordIOReader(tmp_path / "r.rec") as reader:
        assert [reader.read(k) for k in reader.keys] == records
        offset, scanned = 0, []
        while offset < reader.size:
            record, offset = reader.read_at(offset)
            scanned.append(record)
    assert scanned == records


# --- index ---------------------------------------------------------------------------------------------------------


def test_idx_text_format_and_rebuild(tmp_path):
    rec = tmp_path / "x.rec"
    with RecordIOWriter(rec) as writer:
        writer.write(5, pack_record(RecordHeader(0, 0.0, 5, 0), b"a"))  # 25 bytes -> 8 + 28
        writer.write(0, pack_record(RecordHeader(0, 0.0, 0, 0), b""))  # 24 -> 8 + 24
        writer.write(2, pack_record(RecordHeader(0, 0.0, 2, 0), b"abcd"))
    idx_text = (tmp_path / "x.idx").read_text()
    assert idx_text == "5\t0\n0\t36\n2\t68\n"
    assert scan_offsets(rec) == [0, 36, 68]
    (tmp_path / "x.idx").unlink()
    assert rebuild_index(rec) == tmp_path / "x.idx"
    assert (tmp_path / "x.idx").read_text() == idx_text  # keys recovered from the header ids
    assert RecordIOReader(rec).keys == [5, 0, 2]


def test_rebuild_falls_back_to_file_order_keys(tmp_path):
    rec = tmp_path / "raw.rec"
    with RecordIOWriter(rec) as writer:
        for key in (3, 1, 2):
            writer.write(key, b"not an image record %d" % key)  # shorter than an image header: no ids
    assert rebuild_index(rec, tmp_path / "other.idx") == tmp_path / "other.idx"
    assert (tmp_path / "other.idx").read_text() == "0\t0\n1\t32\n2\t64\n"


def test_write_index_matches_writer(tmp_path):
    labels = write_classic(tmp_path / "c.rec", [2, 1])
    write_index(tmp_path / "w.idx", zip(range(len(labels) + 3), scan_offsets(tmp_path / "c.rec"), strict=True))
    assert (tmp_path / "w.idx").read_text() == (tmp_path / "c.idx").read_text()


# --- layouts -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header_last", [False, True])
def test_classic_layout(tmp_path, header_last):
    labels = write_classic(tmp_path / "train.rec", [2, 3, 1], header_last=header_last)
    if header_last:  # where insightface's tools put record 0; a rebuilt index must still find it
        (tmp_path / "train.idx").unlink()
        rebuild_index(tmp_path / "train.rec")
    ds = FaceRecordDataset(tmp_path / "train.rec")
    assert ds.layout == "classic"
    assert len(ds) == 6
    assert ds.num_classes == 3
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == labels == [0, 0, 1, 1, 1, 2]
    for i in range(len(ds)):
        item = ds[i]
        assert item["index"] == i and item["label"] == labels[i]
        assert item["image"].shape == (6, 6, 3) and item["image"].dtype == np.uint8
        assert tuple(item["image"][0, 0]) == colour(i + 1)  # image key = i + 1, RGB order
    assert ds.bad_records == 0


def test_classic_labels_follow_image_headers_when_identity_records_disagree(tmp_path, caplog):
    first = 4
    with RecordIOWriter(tmp_path / "d.rec") as writer:
        writer.write(0, pack_record(RecordHeader(2, (float(first), 6.0), 0, 0), b""))
        for key, label in zip((1, 2, 3), (7, 7, 9), strict=True):  # headers say 7 and 9, identity order 0 and 1
            writer.write(key, pack_record(RecordHeader(0, float(label), key, 0), png(colour(key))))
        writer.write(4, pack_record(RecordHeader(2, (1.0, 3.0), 4, 0), b""))
        writer.write(5, pack_record(RecordHeader(2, (3.0, 4.0), 5, 0), b""))
    with caplog.at_level(logging.WARNING):
        ds = FaceRecordDataset(tmp_path / "d.rec")
    assert "disagree" in caplog.text
    assert ds.layout == "classic"
    assert ds.labels.tolist() == [7, 7, 9]
    assert ds.num_classes == 10


@pytest.mark.parametrize("label_arrays", [False, True])
def test_flat_layout(tmp_path, label_arrays):
    labels = [3, 0, 2, 2, 1]
    write_flat(tmp_path / "flat.rec", labels, label_arrays)
    ds = FaceRecordDataset(tmp_path / "flat.rec")
    assert ds.layout == "flat"
    assert ds.labels.tolist() == labels
    assert ds.num_classes == 4
    assert [ds[i]["label"] for i in range(5)] == labels
    assert tuple(ds[4]["image"][2, 3]) == colour(4)


def test_flat_pair_labels_are_not_mistaken_for_a_classic_header(tmp_path):
    # Record 0 of an im2rec file with label pairs looks like an insightface header, but its range holds images.
    with RecordIOWriter(tmp_path / "p.rec") as writer:
        for key, pair in enumerate([(2.0, 4.0), (1.0, 0.0), (2.0, 3.0), (0.0, 4.0), (1.0, 1.0)]):
            writer.write(key, pack_record(RecordHeader(2, pair, key, 0), png(colour(key))))
    ds = FaceRecordDataset(tmp_path / "p.rec")
    assert ds.layout == "flat"
    assert ds.labels.tolist() == [2, 1, 2, 0, 1]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ((7, 11), "no key 10"),  # one identity more than there are records
        ((8, 10), "record 7"),  # the first identity record would count as an image
        ((6, 10), "record 6"),  # the last image would count as an identity record
        ((7, float("nan")), "are no pair of record keys"),  # a NaN is no reason to read the flat layout
        ((7, 1e9), "the index holds only 10 records"),  # refused before allocating a billion keys
    ],
)
def test_inconsistent_classic_header_is_an_error_not_the_flat_layout(tmp_path, header, problem):
    write_classic(tmp_path / "c.rec", [2, 3, 1], header=header)  # right header: (7, 10)
    with pytest.raises(DataError) as excinfo:
        FaceRecordDataset(tmp_path / "c.rec")
    assert_data_error(excinfo, tmp_path / "c.rec", "record 0", problem)


def test_bgr_flag_swaps_channels(tmp_path):
    with RecordIOWriter(tmp_path / "red.rec") as writer:
        writer.write(0, pack_record(RecordHeader(0, 0.0, 0, 0), png((255, 0, 0))))
        gray = cv2.imencode(".png", np.full((5, 5), 77, np.uint8))[1].tobytes()
        writer.write(1, pack_record(RecordHeader(0, 0.0, 1, 0), gray))
    rgb = FaceRecordDataset(tmp_path / "red.rec")
    assert rgb[0]["image"][0, 0].tolist() == [255, 0, 0]
    assert FaceRecordDataset(tmp_path / "red.rec", bgr=True)[0]["image"][0, 0].tolist() == [0, 0, 255]
    assert rgb[1]["image"].shape == (5, 5, 3)  # grayscale becomes 3 channels
    assert rgb[1]["image"][4, 4].tolist() == [77, 77, 77]


# --- bad input -----------------------------------------------------------------------------------------------------


def assert_data_error(excinfo: pytest.ExceptionInfo[DataError], path: Path, *words: str) -> None:
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_files(tmp_path):
    with pytest.raises(DataError) as excinfo:
        FaceRecordDataset(tmp_path / "nope.rec")
    assert_data_error(excinfo, tmp_path / "nope.rec", "no such file")
    write_flat(tmp_path / "a.rec", [0, 1])
    (tmp_path / "a.idx").unlink()
    with pytest.raises(DataError) as excinfo:
        RecordIOReader(tmp_path / "a.rec")
    assert_data_error(excinfo, tmp_path / "a.idx", f"python -m tools.make_rec --rebuild-index {tmp_path / 'a.rec'}")
    assert not (tmp_path / "a.idx").exists()  # never rebuilt silently


def test_empty_file(tmp_path):
    (tmp_path / "e.rec").write_bytes(b"")
    (tmp_path / "e.idx").write_text("")
    with pytest.raises(DataError) as excinfo:
        FaceRecordDataset(tmp_path / "e.rec")
    assert_data_error(excinfo, tmp_path / "e.rec", "empty")
    write_flat(tmp_path / "f.rec", [0])
    (tmp_path / "f.idx").write_text("")
    with pytest.raises(DataError) as excinfo:
        RecordIOReader(tmp_path / "f.rec")
    assert_data_error(excinfo, tmp_path / "f.idx", "no entries")


def test_truncated_rec(tmp_path):
    write_flat(tmp_path / "t.rec", [0, 1, 2])
    data = (tmp_path / "t.rec").read_bytes()
    (tmp_path / "t.rec").write_bytes(data[:-10])
    with pytest.raises(DataError) as excinfo:
        RecordIOReader(tmp_path / "t.rec")
    assert_data_error(excinfo, tmp_path / "t.rec", "truncated")
    with pytest.raises(DataError) as excinfo:
        scan_offsets(tmp_path / "t.rec")
    assert_data_error(excinfo, tmp_path / "t.rec", "truncated")


def test_wrong_magic(tmp_path):
    write_flat(tmp_path / "w.rec", [0, 1])
    data = bytearray((tmp_path / "w.rec").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "w.rec").write_bytes(bytes(data))
    with pytest.raises(DataError) as excinfo:
        FaceRecordDataset(tmp_path / "w.rec")
    assert_data_error(excinfo, tmp_path / "w.rec", "wrong magic", "byte 0")


def test_idx_past_end(tmp_path):
    write_flat(tmp_path / "p.rec", [0, 1])
    with (tmp_path / "p.idx").open("a") as fh:
        fh.write(f"2\t{(tmp_path / 'p.rec').stat().st_size}\n")
    with pytest.raises(DataError) as excinfo:
        RecordIOReader(tmp_path / "p.rec")
    assert_data_error(excinfo, tmp_path / "p.idx", "past the end", str(tmp_path / "p.rec"))


@pytest.mark.parametrize("line", ["garbage", "1 36", "1\t-4", "1\t36\t7", "x\t36"])
def test_garbage_idx_line(tmp_path, line):
    write_flat(tmp_path / "g.rec", [0, 1])
    (tmp_path / "g.idx").write_text(f"0\t0\n{line}\n")
    with pytest.raises(DataError) as excinfo:
        RecordIOReader(tmp_path / "g.rec")
    assert_data_error(excinfo, tmp_path / "g.idx", "line 2")


def test_duplicate_idx_key(tmp_path):
    write_flat(tmp_path / "d.rec", [0, 1])
    (tmp_path / "d.idx").write_text("0\t0\n0\t0\n")
    with pytest.raises(DataError) as excinfo:
        RecordIOReader(tmp_path / "d.rec")
    assert_data_error(excinfo, tmp_path / "d.idx", "twice")


def write_with_bad(path: Path, n: int, bad: dict[int, bytes]) -> None:
    """Flat file of ``n`` images (label = key % 3) where the records in ``bad`` hold the given bytes instead."""
    with RecordIOWriter(path) as writer:
        for key in range(n):
            image = png(colour(key))
            writer.write(key, bad.get(key, pack_record(RecordHeader(0, float(key % 3), key, 0), image)))


def test_bad_record_is_skipped_counted_and_warned_once(tmp_path, caplog):
    broken = pack_record(RecordHeader(0, 1.0, 2, 0), b"not an image")
    write_with_bad(tmp_path / "b.rec", 6, {2: broken})
    ds = FaceRecordDataset(tmp_path / "b.rec", max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="lafs.data.recordio"):
        item = ds[2]
        assert (item["index"], item["label"]) == (3, 0)  # the next record, with its own label
        assert tuple(item["image"][0, 0]) == colour(3)
        assert ds[2]["index"] == 3
    assert ds.bad_records == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "record 2" in warnings[0].getMessage()
    assert str(tmp_path / "b.rec") in warnings[0].getMessage()


def test_malformed_header_wraps_around(tmp_path):
    write_with_bad(tmp_path / "h.rec", 4, {3: pack_record(RecordHeader(0, 0.0, 3, 0), b"")})
    ds = FaceRecordDataset(tmp_path / "h.rec", max_bad_fraction=0.5)
    assert ds[3]["index"] == 0
    assert ds.bad_records == 1


@pytest.mark.parametrize("damage", ["short", "label", "frame"])
def test_flat_record_whose_label_does_not_read_is_skipped_and_counted(tmp_path, caplog, damage):
    rec = tmp_path / "f.rec"
    broken = {
        "short": pack_record(RecordHeader(0, 0.0, 3, 0), png(colour(3)))[:20],  # shorter than the image header
        "label": pack_record(RecordHeader(0, -1.0, 3, 0), png(colour(3))),  # a label that is no class
    }
    write_with_bad(rec, 6, {3: broken[damage]} if damage in broken else {})  # labels: key % 3
    if damage == "frame":  # not even a RecordIO frame where the index points
        data = bytearray(rec.read_bytes())
        data[scan_offsets(rec)[3]] ^= 0xFF
        rec.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="lafs.data"):
        ds = FaceRecordDataset(rec, max_bad_fraction=0.5)
    assert ds.layout == "flat"
    assert len(ds) == 5 and ds.labels.tolist() == [0, 1, 2, 1, 2]
    assert [ds[i]["label"] for i in range(5)] == [0, 1, 2, 1, 2]
    assert ds.bad_records == 1 and "record 3" in caplog.text
    with pytest.raises(DataError) as excinfo:  # 1 of 6 is more than the default 1 %: counted like any bad record
        FaceRecordDataset(rec)
    assert_data_error(excinfo, rec, "1 of 6")


def test_too_many_bad_records_raise(tmp_path):
    write_with_bad(tmp_path / "many.rec", 10, {4: pack_record(RecordHeader(0, 1.0, 4, 0), b"junk")})
    ds = FaceRecordDataset(tmp_path / "many.rec")  # 1 of 10 > 1 % of the data set: an error at the bad one
    for i in range(4):
        ds[i]
    with pytest.raises(DataError) as excinfo:
        ds[4]
    assert_data_error(excinfo, tmp_path / "many.rec", "1 of 10")
    lenient = FaceRecordDataset(tmp_path / "many.rec", max_bad_fraction=0.2)
    assert [lenient[i]["index"] for i in range(10)] == [0, 1, 2, 3, 5, 5, 6, 7, 8, 9]


def test_bad_record_limit_is_a_share_of_the_data_set_not_of_the_reads_so_far(tmp_path):
    n = 217
    write_with_bad(tmp_path / "two.rec", n, {k: pack_record(RecordHeader(0, 1.0, k, 0), b"junk") for k in (5, 100)})
    ds = FaceRecordDataset(tmp_path / "two.rec")  # 2 of 217 is under 1 %, though 2 of the first 190 is not
    assert len({ds[i]["index"] for i in range(n)}) == n - 2
    assert ds.bad_records == 2
    write_with_bad(
        tmp_path / "three.rec", n, {k: pack_record(RecordHeader(0, 1.0, k, 0), b"junk") for k in (5, 100, 150)}
    )
    ds = FaceRecordDataset(tmp_path / "three.rec")
    with pytest.raises(DataError) as excinfo:
        for i in range(n):
            ds[i]
    assert_data_error(excinfo, tmp_path / "three.rec", "3 of 217", "max_bad_fraction=0.01")
    assert i == 150


def test_garbled_jpeg_is_a_bad_record(tmp_path):
    jpegs = [encode_jpeg(textured(seed)) for seed in range(4)]
    jpegs[2] = garble(jpegs[2])
    write_face_rec(tmp_path / "j.rec", [(jpeg, 0) for jpeg in jpegs])
    ds = FaceRecordDataset(tmp_path / "j.rec", max_bad_fraction=0.5)
    assert [ds[i]["index"] for i in range(4)] == [0, 1, 3, 3]
    assert ds.bad_records == 1


# --- processes and atomicity ---------------------------------------------------------------------------------------


def test_reader_pickles_and_reopens_per_process(tmp_path, monkeypatch):
    write_flat(tmp_path / "k.rec", [0, 1, 2])
    reader = RecordIOReader(tmp_path / "k.rec")
    first = reader.read(1)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(1) == first and clone.read(2) == reader.read(2)
    handle = reader._fh
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)  # as seen from a forked worker
    assert reader.read(1) == first
    assert reader._fh is not handle and handle.closed


def test_dataloader_workers_match_index_access(tmp_path):
    labels = write_classic(tmp_path / "dl.rec", [3, 2, 3])
    ds = FaceRecordDataset(tmp_path / "dl.rec")
    ds[0]  # the parent has an open handle before the workers start
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    items = list(loader)
    assert len(items) == len(labels)
    for i, item in enumerate(items):
        expected = ds[i]
        assert item["index"] == expected["index"] == i
        assert item["label"] == expected["label"] == labels[i]
        np.testing.assert_array_equal(item["image"].numpy(), expected["image"])


def test_writer_is_atomic(tmp_path):
    rec, idx = tmp_path / "out.rec", tmp_path / "out.idx"
    with pytest.raises(RuntimeError), RecordIOWriter(rec) as writer:
        writer.write(0, b"partial")
        assert not rec.exists() and not idx.exists()  # only temporary files while writing
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    rec.write_bytes(b"old")
    with RecordIOWriter(rec) as writer:
        writer.write(0, b"new")
        assert rec.read_bytes() == b"old"
    assert RecordIOReader(rec).read(0) == b"new"
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "out.rec.lafs-index")  # the reader's cache
    assert written == ["out.idx", "out.rec"]
