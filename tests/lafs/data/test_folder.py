import cv2
import numpy as np
import pytest

from lafs.data.folder import (
    few_shot_indices,
    open_image_folder,
    open_list_file,
    read_list_file,
    scan_image_folder,
    write_list_file,
)
from lafs.errors import DataError


def test_scan_sorts_identities_and_images(face_folder):
    root, items = face_folder
    paths, labels, names = scan_image_folder(root)
    assert names == ["person_00", "person_01", "person_02"]
    assert labels.tolist() == [item["label"] for item in items]
    assert [p.name for p in paths[:4]] == ["0.png", "1.png", "2.png", "3.png"]


def test_folder_dataset_returns_rgb_items(face_folder):
    root, items = face_folder
    dataset = open_image_folder(root)
    assert len(dataset) == 12 and dataset.num_classes == 3
    item = dataset[5]
    assert item["label"] == 1 and item["index"] == 5
    np.testing.assert_array_equal(item["image"], items[5]["image"])  # PNG is lossless, channels are RGB


def test_folder_dataset_resizes(face_folder):
    assert open_image_folder(face_folder[0], image_size=64)[0]["image"].shape == (64, 64, 3)


def test_list_file_round_trip(face_folder, tmp_path):
    paths, labels, _ = scan_image_folder(face_folder[0])
    listed = write_list_file(tmp_path / "list.csv", paths, labels)
    read_paths, read_labels = read_list_file(listed)
    assert [p.resolve() for p in read_paths] == [p.resolve() for p in paths]
    np.testing.assert_array_equal(read_labels, labels)
    assert len(open_list_file(listed)) == 12


def test_list_file_paths_are_relative_to_the_file(face_folder, tmp_path):
    root = face_folder[0]
    (root.parent / "relative.csv").write_text("faces/person_01/2.png,7\n# comment\n\nfaces/person_00/0.png,0\n")
    dataset = open_list_file(root.parent / "relative.csv")
    assert dataset.labels.tolist() == [7, 0] and dataset[0]["label"] == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [("a.png\n", ":1: expected 'path,label'"), ("a.png,x\n", ":1: expected"), ("", "no 'path,label' rows")],
)
def test_bad_list_files(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_list_file(tmp_path / "bad.csv")


def test_missing_listed_image(tmp_path):
    (tmp_path / "list.csv").write_text("nowhere.png,0\n")
    with pytest.raises(DataError, match="does not exist"):
        open_list_file(tmp_path / "list.csv")


def test_a_flat_folder_is_one_unlabelled_set(face_folder, tmp_path):
    # What tools.align writes from a flat folder of photos: landmarks and pretraining read it, labels all 0.
    for path in sorted((face_folder[0] / "person_01").iterdir()):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    dataset = open_image_folder(tmp_path)
    assert len(dataset) == 4 and dataset.num_classes == 1 and [dataset[i]["label"] for i in range(4)] == [0] * 4
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images in identity sub-folders"):
        open_image_folder(empty)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no images in identity sub-folders"):
        scan_image_folder(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        scan_image_folder(tmp_path / "nope")


def test_undecodable_image_is_skipped_and_counted(face_folder, tmp_path, caplog):
    root, _ = face_folder
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths, labels, _ = scan_image_folder(root)
    listed = write_list_file(
        tmp_path / "list.csv", [*paths[:3], tmp_path / "broken.png", *paths[3:]], [0, 0, 0, 5, *labels[3:]]
    )
    dataset = open_list_file(listed, max_bad_fraction=0.5)
    item = dataset[3]
    assert item["index"] == 4 and item["label"] == labels[3]  # the next good image, with its own label
    assert dataset.bad_records == 1 and "broken.png" in caplog.text


def test_too_many_bad_images_stop_the_run(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"junk")
    listed = tmp_path / "list.csv"
    listed.write_text("".join(f"{i}.png,0\n" for i in range(3)))
    with pytest.raises(DataError, match="1 of 3 records are bad"):
        open_list_file(listed)[0]


def test_few_shot_is_seeded_and_per_identity():
    labels = np.repeat(np.arange(5), [1, 2, 5, 8, 3])
    chosen = few_shot_indices(labels, shots=2, seed=3)
    assert np.array_equal(chosen, few_shot_indices(labels, shots=2, seed=3))
    assert not np.array_equal(chosen, few_shot_indices(labels, shots=2, seed=4))
    assert np.bincount(labels[chosen]).tolist() == [1, 2, 2, 2, 2]
    assert np.all(np.diff(chosen) > 0)
    with pytest.raises(ValueError):
        few_shot_indices(labels, shots=0, seed=0)


def test_training_on_photos_that_are_not_square_crops_warns(face_folder, tmp_path, caplog):
    root = tmp_path / "photos"
    (root / "someone").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "someone" / f"{i}.jpg"), np.zeros((120, 200 if i else 120, 3), np.uint8))
    with caplog.at_level("WARNING", logger="lafs.data"):
        open_image_folder(root, image_size=112)
    assert "2 of 3 sampled images are not square (e.g. 1.jpg: 200 x 120)" in caplog.text
    assert "squashed to 112 x 112" in caplog.text and "tools.align" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lafs.data"):
        open_image_folder(face_folder[0], image_size=112)  # aligned crops: nothing to say
    assert caplog.text == ""
