"""PretrainViews and collate_views: batches, determinism per (seed, epoch, index), worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lafs.views import (
    PretrainViews,
    collate_views,
)
from tests.lafs.views.common import (
    K,
    S,
    assert_same_views,
    make_views,
)


def test_collated_batch_is_channels_first_uint8_with_labels(faces: list[dict]) -> None:
    dataset = PretrainViews(faces, make_views(num_local=3, local_landmarks=5), seed=1)
    batch = collate_views([dataset[i] for i in range(4)])
    expected = {
        "global_images": ((4, 2, 3, S, S), torch.uint8),
        "global_landmarks": ((4, 2, K, 2), torch.float32),
        "global_valid": ((4, 2, K), torch.bool),
        "local_images": ((4, 3, 3, S, S), torch.uint8),
        "local_landmarks": ((4, 3, K, 2), torch.float32),
        "local_ids": ((4, 3, 5), torch.int64),
        "local_valid": ((4, 3, K), torch.bool),
        "label": ((4,), torch.int64),
        "index": ((4,), torch.int64),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert batch["label"].tolist() == [f["label"] for f in faces[:4]]
    assert batch["index"].tolist() == [0, 1, 2, 3]
    item = dataset[2]
    np.testing.assert_array_equal(batch["local_images"][2, 1].permute(1, 2, 0).numpy(), item["local_images"][1])


def test_globals_only_config_collates_to_empty_local_tensors(faces: list[dict]) -> None:
    batch = collate_views([PretrainViews(faces, make_views(num_local=0), seed=0)[i] for i in range(2)])
    assert tuple(batch["local_images"].shape) == (2, 0, 3, S, S)
    assert tuple(batch["local_ids"].shape) == (2, 0, 36)
    assert tuple(batch["global_images"].shape) == (2, 2, 3, S, S)


def test_pretrain_views_are_a_pure_function_of_seed_epoch_and_index(faces: list[dict]) -> None:
    views = make_views(num_local=2)
    forward = PretrainViews(faces, views, seed=5)
    reverse = PretrainViews(faces, views, seed=5)
    items = [forward[i] for i in range(len(faces))]
    for i in reversed(range(len(faces))):
        assert_same_views(reverse[i], items[i])
    assert items[3]["label"] == faces[3]["label"] and items[3]["index"] == 3
    forward.set_epoch(1)
    later = forward[0]
    assert not np.array_equal(later["global_landmarks"], items[0]["global_landmarks"])
    assert not np.array_equal(later["global_images"], items[0]["global_images"])
    forward.set_epoch(0)
    assert_same_views(forward[0], items[0])  # resuming at epoch 0 replays it exactly
    assert_same_views(forward[-1], items[-1])
    other_seed = PretrainViews(faces, views, seed=6)[0]
    assert not np.array_equal(other_seed["local_ids"], items[0]["local_ids"])
    # Two items of one epoch get different draws.
    assert not np.array_equal(items[0]["local_ids"], items[1]["local_ids"])
    with pytest.raises(IndexError):
        forward[len(faces)]
    with pytest.raises(ValueError, match="epoch"):
        forward.set_epoch(-1)


def test_worker_processes_make_the_same_views(faces: list[dict]) -> None:
    dataset = PretrainViews(faces, make_views(num_local=2, local_landmarks=6), seed=3)
    dataset.set_epoch(2)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_views)
    batches = list(loader)
    direct = [collate_views([dataset[i] for i in range(start, start + 3)]) for start in (0, 3)]
    for got, want in zip(batches, direct, strict=True):
        for key in want:
            assert torch.equal(got[key], want[key]), key
