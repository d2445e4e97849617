"""The few-shot split: held-out identities, balanced interleaved pairs, subset landmark caches."""

from __future__ import annotations

import numpy as np
import pytest

from lafs.errors import ConfigError, DataError
from lafs.fewshot.split import fixed_split, relabel, split_identities, subset_cache, verification_pairs
from lafs.landmarks.cache import CacheInfo, LandmarkCache

NAMES = ["ann", "bob", "cat", "dan", "eve", "fay"]
LABELS = np.repeat(np.arange(6), 4)  # 6 identities x 4 images


def test_split_holds_out_whole_identities_and_depends_on_the_seed() -> None:
    split = split_identities(LABELS, NAMES, unseen=2, seed=0)
    assert len(split.unseen) == 2 and len(split.seen) == 4
    assert set(split.seen) | set(split.unseen) == set(NAMES) and not set(split.seen) & set(split.unseen)
    unseen_labels = {NAMES.index(name) for name in split.unseen}
    assert set(LABELS[split.unseen_positions]) == unseen_labels
    assert not set(LABELS[split.seen_positions]) & unseen_labels
    assert len(split.seen_positions) + len(split.unseen_positions) == len(LABELS)
    again = split_identities(LABELS, NAMES, unseen=2, seed=0)
    assert again.unseen == split.unseen
    draws = {split_identities(LABELS, NAMES, unseen=2, seed=seed).unseen for seed in range(10)}
    assert len(draws) > 1


def test_split_depends_on_names_not_folder_order() -> None:
    # The same people listed in another order (labels follow) give the same held-out names.
    order = [5, 3, 1, 0, 2, 4]
    shuffled_names = [NAMES[i] for i in order]
    shuffled_labels = np.array([order.index(label) for label in LABELS])
    expected = split_identities(LABELS, NAMES, 2, 3).unseen
    assert split_identities(shuffled_labels, shuffled_names, 2, 3).unseen == expected


@pytest.mark.parametrize("unseen", [1, 5])
def test_split_keeps_two_identities_each_side(unseen: int) -> None:
    with pytest.raises(ConfigError, match="--unseen must lie in"):
        split_identities(LABELS, NAMES, unseen=unseen, seed=0)


def test_relabel_makes_classes_contiguous() -> None:
    assert relabel(np.array([7, 3, 7, 9])).tolist() == [1, 0, 1, 2]


def test_pairs_are_balanced_interleaved_and_distinct() -> None:
    labels = np.repeat(np.arange(3), 5)
    pairs = verification_pairs(labels, 20, seed=1)
    assert len(pairs) == 20
    assert [same for _, _, same in pairs] == [True, False] * 10  # every contiguous fold holds both kinds
    assert all((labels[a] == labels[b]) == same and a < b for a, b, same in pairs)
    assert len({(a, b) for a, b, _ in pairs}) == 20


def test_pairs_refuse_more_same_pairs_than_exist() -> None:
    labels = np.repeat(np.arange(2), 2)  # one same pair per identity: 2 in all
    with pytest.raises(DataError, match="2 same-identity and 4 different-identity pairs; 5 of each"):
        verification_pairs(labels, 10, seed=0)
    lopsided = np.array([0] * 6 + [1])  # 15 same pairs, but only 6 different ones: refused, never an endless draw
    with pytest.raises(DataError, match="15 same-identity and 6 different-identity pairs; 8 of each"):
        verification_pairs(lopsided, 16, seed=0)


def test_subset_cache_keeps_the_chosen_rows(tmp_path) -> None:
    full = LandmarkCache.create(tmp_path / "full", CacheInfo("all.csv", 5, "mediapipe49", 112, "test"))
    points = np.arange(5 * 49 * 2, dtype=np.float32).reshape(5, 49, 2)
    full.write(np.arange(5), points, np.array([True, False, True, True, True]))
    full.flush()
    subset = subset_cache(full, np.array([3, 1]), tmp_path / "subset")
    reopened = LandmarkCache.open(tmp_path / "subset")
    assert subset.complete and reopened.complete
    np.testing.assert_array_equal(reopened.landmarks[:], points[[3, 1]])
    assert reopened.found.tolist() == [True, False]


def test_fixed_split_holds_the_named_identities_aside() -> None:
    split = fixed_split(LABELS, NAMES, ["fay", "bob"])
    assert split.unseen == ("bob", "fay") and split.seen == ("ann", "cat", "dan", "eve")
    assert sorted(set(LABELS[split.unseen_positions])) == [1, 5]
    with pytest.raises(DataError, match="'zed' is not in the input"):
        fixed_split(LABELS, NAMES, ["zed", "bob"])
    with pytest.raises(ConfigError, match="2 to 4 held-aside"):
        fixed_split(LABELS, NAMES, ["bob"])
