"""The on-disk cache of derived index arrays: built once, mapped after, rebuilt when a source changes, never torn."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from lafs.data import index_cache, recordio
from lafs.data.images import encode_jpeg
from lafs.data.index_cache import MappedArrays, cached_arrays, fingerprint
from lafs.data.open import open_dataset
from lafs.data.recordio import FaceRecordDataset, RecordIOReader, write_face_rec
from lafs.errors import DataError
from tests.lafs.data.common import textured


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))  # never the real home's
    return folder


class CountingBuilder:
    """Squares of 0..n-1 and their sum; counts how often it was asked."""

    def __init__(self, n: int = 1000) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        self.calls += 1
        squares = np.arange(self.n, dtype=np.int64) ** 2
        return {"squares": squares, "flags": squares % 3 == 0}, {"total": int(squares.sum())}


def source(tmp_path: Path, data: bytes = b"records") -> Path:
    path = tmp_path / "data" / "train.rec"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def test_built_once_then_mapped_read_only(tmp_path):
    rec, build = source(tmp_path), CountingBuilder()
    first = cached_arrays([rec], "squares", build)
    second = cached_arrays([rec], "squares", build)
    assert build.calls == 1
    assert first.folder == second.folder and first.folder.parent == rec.with_name("train.rec.lafs-index")
    assert isinstance(second["squares"], np.memmap) and not second["squares"].flags.writeable
    np.testing.assert_array_equal(second["squares"], np.arange(1000) ** 2)
    assert second["flags"].dtype == np.bool_ and second["flags"].sum() == 334  # 0, 3, ..., 999
    assert second.info == {"total": 332833500} == first.info  # sum of k^2, k < 1000: 999*1000*1999/6
    assert sorted(second) == ["flags", "squares"] and len(second) == 2


def test_a_changed_source_gets_a_new_cache_and_the_old_one_stays_for_running_jobs(tmp_path, caplog):
    rec, build = source(tmp_path), CountingBuilder()
    old = cached_arrays([rec], "squares", build)
    other_kind = cached_arrays([rec], "cubes", build).folder
    payload = pickle.dumps(old)  # as a job started before the change sends it to a new worker
    stat = rec.stat()
    rec.write_bytes(b"recordz")  # same size, and perhaps the same coarse mtime: the sampled bytes tell
    os.utime(rec, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with caplog.at_level(logging.WARNING, logger="lafs.data.index_cache"):
        new = cached_arrays([rec], "squares", build).folder
    assert build.calls == 3 and new != old.folder and old.folder.exists() and other_kind.exists()
    assert "earlier version of the data" in caplog.text and old.folder.name in caplog.text
    assert other_kind.name not in caplog.text  # another kind of arrays, not an older version
    np.testing.assert_array_equal(pickle.loads(payload)["squares"], old["squares"])


@pytest.mark.parametrize("change", ["middle", "same_bytes"])
def test_fingerprint_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path, monkeypatch, change):
    monkeypatch.setattr(index_cache, "_SAMPLE_BYTES", 4)  # the middle bytes are not sampled
    rec = source(tmp_path, b"0123456789abcdef")
    before = fingerprint([rec])
    stat = rec.stat()
    # rsync -a / cp -p keep the mtime; the change time (and, for a replaced file, the inode) cannot be kept
    rec.write_bytes(b"0123459876abcdef" if change == "middle" else rec.read_bytes())
    os.utime(rec, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    if rec.stat().st_ctime_ns == stat.st_ctime_ns:
        pytest.skip("the file system's clock did not tick between the two writes")
    assert fingerprint([rec]) != before


def test_a_source_changed_while_it_is_indexed_is_not_cached(tmp_path):
    rec = source(tmp_path)

    def racing() -> tuple[dict[str, np.ndarray], dict[str, int]]:
        rec.write_bytes(b"replaced by another job")
        return CountingBuilder()()

    with pytest.raises(DataError, match="changed while it was being indexed"):
        cached_arrays([rec], "squares", racing)
    assert not list(rec.with_name("train.rec.lafs-index").glob("squares*"))


def test_an_unreadable_cache_place_is_passed_over(tmp_path, monkeypatch, user_cache):
    rec = source(tmp_path)
    beside = rec.with_name("train.rec.lafs-index")
    real_is_file = Path.is_file

    def is_file(path: Path) -> bool:
        if beside in path.parents:
            raise PermissionError(13, "Permission denied", str(path))  # another user's folder, mode 0700
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    monkeypatch.setattr(index_cache, "_publish", _refuse_beside(index_cache._publish, beside))
    mapped = cached_arrays([rec], "squares", CountingBuilder())
    assert mapped.folder is not None and user_cache in mapped.folder.parents


def _refuse_beside(publish, beside):  # type: ignore[no-untyped-def]
    def refusing(root, *args):  # type: ignore[no-untyped-def]
        if root == beside:
            raise PermissionError(13, "Permission denied", str(root))
        return publish(root, *args)

    return refusing


def test_no_home_leaves_only_the_place_beside_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", no_home)
    assert index_cache.cache_roots(source(tmp_path)) == [tmp_path / "data" / "train.rec.lafs-index"]


def test_a_relative_source_maps_from_any_working_directory(tmp_path, monkeypatch):
    source(tmp_path)
    monkeypatch.chdir(tmp_path)
    mapped = cached_arrays([Path("data/train.rec")], "squares", CountingBuilder())
    payload = pickle.dumps(mapped)
    monkeypatch.chdir(tmp_path / "data")  # a worker started elsewhere
    assert pickle.loads(payload)["squares"][3] == 9


def test_fingerprint_sees_the_tail_of_a_large_file(tmp_path, monkeypatch):  # beyond the times and the inode
    monkeypatch.setattr(index_cache, "_SAMPLE_BYTES", 4)
    rec = source(tmp_path, b"0123456789")
    before = fingerprint([rec])
    stat = rec.stat()
    rec.write_bytes(b"0123456780")  # only the last byte differs
    os.utime(rec, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint([rec]) != before


def test_pickling_sends_the_folder_not_the_data(tmp_path):
    rec = source(tmp_path)
    mapped = cached_arrays([rec], "squares", CountingBuilder(200_000))
    payload = pickle.dumps(mapped)
    assert len(payload) < 1000  # the arrays hold 1.8 MB
    again = pickle.loads(payload)
    assert isinstance(again["squares"], np.memmap) and again.info == mapped.info
    np.testing.assert_array_equal(again["squares"], mapped["squares"])


def test_read_only_place_falls_back_to_the_user_cache_then_to_memory(tmp_path, user_cache, caplog):
    rec = source(tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # mkdir under it fails even for root, unlike a chmod
    build = CountingBuilder()
    mapped = cached_arrays([rec], "squares", build, roots=[blocked / "cache", user_cache / "lafs"])
    assert mapped.folder is not None and mapped.folder.parent == user_cache / "lafs"
    with caplog.at_level(logging.WARNING, logger="lafs.data.index_cache"):
        in_memory = cached_arrays([rec], "other", build, roots=[blocked / "cache"])
    assert in_memory.folder is None and not isinstance(in_memory["squares"], np.memmap)
    assert "no writable place for its index cache" in caplog.text and "in memory" in caplog.text
    assert pickle.loads(pickle.dumps(in_memory))["squares"].sum() == in_memory["squares"].sum()
    assert not list(blocked.parent.glob("*.tmp")) and not list((user_cache / "lafs").glob(".*.tmp"))


def test_default_fallback_is_under_xdg_cache_home(tmp_path, user_cache):
    rec = source(tmp_path)
    roots = index_cache.cache_roots(rec)
    assert roots[0] == rec.with_name("train.rec.lafs-index")
    assert roots[1].parent == user_cache / "lafs" / "index" and roots[1].name.startswith("train.rec-")


def test_a_process_that_loses_the_race_keeps_the_winners_cache(tmp_path):
    arrays, info = CountingBuilder()()
    root, name = tmp_path / "cache", "squares1-0123456789abcdef"
    first = index_cache._publish(root, name, arrays, info, "0123456789abcdef")
    written = (first / "squares.npy").stat().st_mtime_ns
    second = index_cache._publish(root, name, arrays, info, "0123456789abcdef")
    assert second == first and (first / "squares.npy").stat().st_mtime_ns == written
    assert [p.name for p in root.iterdir()] == [name]  # no temporary folder left
    assert MappedArrays.open(first).stamp == "0123456789abcdef"


def test_a_failing_builder_caches_nothing(tmp_path):
    rec = source(tmp_path)

    def broken() -> tuple[dict[str, np.ndarray], dict[str, int]]:
        raise DataError("bad source")

    with pytest.raises(DataError, match="bad source"):
        cached_arrays([rec], "squares", broken)
    assert not rec.with_name("train.rec.lafs-index").exists()


@pytest.mark.parametrize("damage", ["truncated", "meta", "shape", "no_info"])
def test_a_damaged_cache_is_one_line_naming_the_folder(tmp_path, damage):
    rec = source(tmp_path)
    folder = cached_arrays([rec], "squares", CountingBuilder()).folder
    assert folder is not None
    if damage == "truncated":
        (folder / "squares.npy").write_bytes((folder / "squares.npy").read_bytes()[:200])
    elif damage == "meta":
        (folder / "meta.json").write_text("{")
    elif damage == "no_info":
        meta = json.loads((folder / "meta.json").read_text())
        del meta["info"]
        (folder / "meta.json").write_text(json.dumps(meta))
    else:
        np.save(folder / "flags.npy", np.zeros(3, bool))
    with pytest.raises(DataError) as excinfo:
        cached_arrays([rec], "squares", CountingBuilder())
    message = str(excinfo.value)
    assert "\n" not in message and str(folder) in message and "delete that folder" in message


def write_faces(path: Path, identities: int, per_identity: int) -> list[int]:
    labels = [c for c in range(identities) for _ in range(per_identity)]
    jpeg = encode_jpeg(textured(0, size=16))
    write_face_rec(path, ((jpeg, label) for label in labels))
    return labels


def test_face_dataset_maps_its_items_and_pickles_small(tmp_path, monkeypatch):
    monkeypatch.setattr(recordio, "MAP_INDEX_FROM_BYTES", 0)
    rec = tmp_path / "faces.rec"
    labels = write_faces(rec, 50, 40)
    first = FaceRecordDataset(rec)
    again = FaceRecordDataset(rec)
    assert isinstance(again.labels, np.memmap) and again.labels.tolist() == labels
    assert again.num_classes == 50 and again.layout == "classic" and len(again) == 2000
    assert sorted(p.name.split("-")[0] for p in rec.with_name("faces.rec.lafs-index").iterdir()) == [
        "faces1",
        "reader1",
    ]
    payload = pickle.dumps(again)
    assert len(payload) < 4000  # 2,000 items: keys, offsets and labels would be 48 kB
    clone = pickle.loads(payload)
    assert clone[1999]["label"] == 49 and (clone[7]["image"] == first[7]["image"]).all()


def test_small_indexes_are_parsed_and_leave_nothing_beside_the_data(tmp_path):
    rec = tmp_path / "faces.rec"
    write_faces(rec, 3, 2)
    dataset = FaceRecordDataset(rec)
    assert dataset._reader.index.folder is None and not isinstance(dataset.labels, np.memmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.idx", "faces.rec"]
    assert RecordIOReader(rec, map_index=True).index.folder is not None  # forced


def test_mapped_index_is_the_parsed_one(tmp_path):
    rec = tmp_path / "faces.rec"
    write_faces(rec, 7, 3)
    parsed, mapped = RecordIOReader(rec, map_index=False), RecordIOReader(rec, map_index=True)
    for name in ("keys", "offsets", "sorted_keys", "sorted_offsets"):
        np.testing.assert_array_equal(parsed.index[name], mapped.index[name])
    assert parsed.index.info == mapped.index.info
    assert mapped.read(0) == parsed.read(0) and mapped.keys == parsed.keys


def test_opened_dataset_keeps_the_mapped_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(recordio, "MAP_INDEX_FROM_BYTES", 0)
    rec = tmp_path / "faces.rec"
    write_faces(rec, 50, 40)
    dataset = open_dataset(rec, landmark_set="mediapipe49")  # template landmarks: every face kept
    assert isinstance(dataset.labels, np.memmap) and len(dataset) == 2000 and dataset.positions == range(2000)
    assert len(pickle.dumps(dataset)) < 6000  # 2,000 items' arrays would be 48 kB; the template is 392 B


def test_a_reordered_idx_with_its_old_mtime_is_indexed_again(tmp_path):
    rec = tmp_path / "r.rec"
    with recordio.RecordIOWriter(rec) as writer:
        for key in range(50):
            writer.write(key, f"payload-{key:04d}".encode())
    assert RecordIOReader(rec, map_index=True).read(20) == b"payload-0020"
    idx = rec.with_suffix(".idx")
    stat, lines = idx.stat(), idx.read_text().splitlines(keepends=True)
    key20, key21 = lines[20].split("\t")[0], lines[21].split("\t")[0]
    lines[20], lines[21] = key20 + "\t" + lines[21].split("\t")[1], key21 + "\t" + lines[20].split("\t")[1]
    idx.write_text("".join(lines))  # keys 20 and 21 swap their records; same size, mtime put back below
    os.utime(idx, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert RecordIOReader(rec, map_index=True).read(20) == b"payload-0021"
