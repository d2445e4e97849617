"""Face-verification metrics: hand-computed cases, insightface's grid protocol as a reference, the embedding helper."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lafs.evaluation import (
    accuracy_at,
    best_threshold,
    embed_images,
    equal_error_rate,
    evaluate_pairs,
    far_key,
    far_target_resolvable,
    fold_splits,
    kfold_accuracy,
    kfold_splits,
    pair_similarities,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_report,
)

# ------------------------------------------------------------------------------------------------- similarities --


def test_pair_similarities_hand_vectors():
    embeddings = np.array(
        [
            [1.0, 0.0],  # pair 0: orthogonal -> 0
            [0.0, 3.0],
            [2.0, 2.0],  # pair 1: same direction, other length -> 1
            [5.0, 5.0],
            [1.0, -2.0],  # pair 2: opposite -> -1
            [-2.0, 4.0],
            [0.0, 0.0],  # pair 3: a zero vector -> 0, not NaN
            [1.0, 1.0],
            [3.0, 4.0],  # pair 4: (3,4)/5 . (4,3)/5 = 24/25
            [4.0, 3.0],
        ]
    )
    np.testing.assert_allclose(pair_similarities(embeddings), [0.0, 1.0, -1.0, 0.0, 0.96], atol=1e-12)


def test_pair_similarities_rejects_odd_rows():
    with pytest.raises(ValueError, match="even"):
        pair_similarities(np.ones((3, 4)))


# ----------------------------------------------------------------------------------------------------- accuracy --


def test_accuracy_at_predicts_same_at_or_above_threshold():
    # 0.5 >= 0.5 is "same" (correct), 0.2 < 0.5 "different" (wrong, it is same), 0.7 "same" (wrong, it is different).
    assert accuracy_at([0.5, 0.2, 0.7, 0.1], [True, True, False, False], 0.5) == 0.5


def test_best_threshold_hand_case():
    # Sorted: 0.1 D, 0.3 S, 0.4 D, 0.6 S, 0.8 S, 0.9 D. The seven candidates ("same" when >= t):
    #   t = 0.1  (all same)       right: 0.3 0.6 0.8           -> 3/6
    #   t = 0.2  (midpoint)       right: 0.1 0.3 0.6 0.8       -> 4/6
    #   t = 0.35                  right: 0.1 0.6 0.8           -> 3/6
    #   t = 0.5                   right: 0.1 0.4 0.6 0.8       -> 4/6
    #   t = 0.7                   right: 0.1 0.4 0.8           -> 3/6
    #   t = 0.85                  right: 0.1 0.4               -> 2/6
    #   t > 0.9  (none same)      right: 0.1 0.4 0.9           -> 3/6
    # The maximum 4/6 is reached at 0.2 and at 0.5: the smallest, 0.2, wins.
    similarities = [0.9, 0.1, 0.6, 0.3, 0.8, 0.4]
    issame = [False, False, True, True, True, False]
    threshold, accuracy = best_threshold(similarities, issame)
    assert threshold == pytest.approx(0.2)
    assert accuracy == pytest.approx(4 / 6)
    assert accuracy_at(similarities, issame, threshold) == pytest.approx(4 / 6)


def test_best_threshold_unique_optimum_is_the_midpoint():
    # 0.2 D, 0.4 D, 0.5 S, 0.7 D, 0.9 S: "same" from 0.45 gets 0.2, 0.4, 0.5, 0.9 right (4/5); every other split less.
    threshold, accuracy = best_threshold([0.9, 0.2, 0.7, 0.5, 0.4], [True, False, False, True, False])
    assert threshold == pytest.approx(0.45)
    assert accuracy == pytest.approx(0.8)


def test_best_threshold_ties_between_equal_scores():
    # Two pairs at the same similarity cannot be split: 0.5 S, 0.5 D, 0.9 S. Splits: all same (2/3), from 0.7 (2/3),
    # none (1/3); the smallest threshold, the lowest value 0.5 itself, wins.
    threshold, accuracy = best_threshold([0.5, 0.5, 0.9], [True, False, True])
    assert threshold == 0.5
    assert accuracy == pytest.approx(2 / 3)


def test_best_threshold_single_class():
    threshold, accuracy = best_threshold([0.3, -0.2, 0.8], [True, True, True])
    assert (threshold, accuracy) == (-0.2, 1.0)  # everything "same": threshold at the minimum
    threshold, accuracy = best_threshold([0.3, -0.2, 0.8], [False, False, False])
    assert accuracy == 1.0 and threshold > 0.8 and threshold == np.nextafter(0.8, 1.0)  # nothing "same"


def test_best_threshold_adjacent_floats():
    low = 0.5
    high = np.nextafter(low, 1.0)
    threshold, accuracy = best_threshold([low, high], [False, True])
    assert accuracy == 1.0 and low < threshold <= high


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = np.round(rng.uniform(-1, 1, 40), 1)  # rounded: plenty of ties
        labels = rng.random(40) < 0.5
        threshold, accuracy = best_threshold(scores, labels)
        brute = max(accuracy_at(scores, labels, t) for t in np.concatenate((scores, [2.0])))
        assert accuracy == pytest.approx(brute)
        assert accuracy_at(scores, labels, threshold) == pytest.approx(accuracy)


def test_input_validation():
    with pytest.raises(ValueError, match="no pairs"):
        best_threshold([], [])
    with pytest.raises(ValueError, match="finite"):
        best_threshold([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="labels"):
        best_threshold([0.1, 0.2], [True])


# -------------------------------------------------------------------------------------------------------- k-fold --


def test_kfold_splits_match_sklearn_kfold():
    # sklearn KFold(n_splits=10, shuffle=False) on 13 samples: sizes 2, 2, 2, then seven 1s, contiguous.
    splits = kfold_splits(13, 10)
    assert [len(s) for s in splits] == [2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    assert np.array_equal(np.concatenate(splits), np.arange(13))
    assert [s.tolist() for s in kfold_splits(6000, 10)] == [list(range(600 * i, 600 * (i + 1))) for i in range(10)]
    with pytest.raises(ValueError):
        kfold_splits(3, 10)


def test_kfold_perfectly_separable():
    rng = np.random.default_rng(0)
    issame = np.arange(100) % 2 == 0
    similarities = np.where(issame, rng.uniform(0.5, 1.0, 100), rng.uniform(-1.0, 0.4, 100))
    result = kfold_accuracy(similarities, issame)
    assert result["accuracy"] == 1.0 and result["accuracy_std"] == 0.0
    assert len(result["thresholds"]) == 10 and result["fold_accuracies"] == [1.0] * 10


def test_kfold_two_folds_hand_case():
    # Fold A = pairs 0, 1: 0.8 S, 0.2 D.   Fold B = pairs 2, 3: 0.45 S, 0.1 D.
    # Test A, train B: best split of {0.1 D, 0.45 S} is the midpoint 0.275; on A 0.8 >= 0.275 same, 0.2 < 0.275
    #   different: 1.0.
    # Test B, train A: best split of {0.2 D, 0.8 S} is 0.5; on B 0.45 < 0.5 is called different but is same (wrong),
    #   0.1 different (right): 0.5.
    # mean 0.75, population std 0.25.
    result = kfold_accuracy([0.8, 0.2, 0.45, 0.1], [True, False, True, False], folds=2)
    assert result["thresholds"] == pytest.approx([0.275, 0.5])
    assert result["fold_accuracies"] == [1.0, 0.5]
    assert result["accuracy"] == 0.75 and result["accuracy_std"] == 0.25


def test_kfold_uneven_folds_use_kfold_sizes():
    # 13 pairs, 10 folds: folds 0-2 hold 2 pairs, the rest 1. Pair 0 is a same pair with a low score and pair 1 a
    # different pair with a high score; every other pair is separable (same 0.9, different -0.9). Any threshold
    # learnt elsewhere calls pair 0 different and pair 1 same: fold 0 (pairs 0 and 1) scores 0, all others 1.
    issame = np.array([True, False] + [i % 2 == 0 for i in range(11)])
    similarities = np.where(issame, 0.9, -0.9)
    similarities[0], similarities[1] = -0.95, 0.95
    result = kfold_accuracy(similarities, issame)
    assert result["fold_accuracies"] == [0.0] + [1.0] * 9
    assert result["accuracy"] == pytest.approx(0.9)


def test_a_list_with_every_same_pair_first_is_folded_by_class():
    # 100 same pairs (0.9) then 100 different ones (-0.9), perfectly separable. Contiguous folds would hold one class
    # each (insightface's protocol then reads such a list at chance or worse); stratified folds hold 10 of each.
    issame = np.arange(200) < 100
    result = kfold_accuracy(np.where(issame, 0.9, -0.9), issame)
    assert result["folding"] == "stratified" and result["accuracy"] == 1.0
    splits, _ = fold_splits(issame)
    assert [int(issame[s].sum()) for s in splits] == [10] * 10 and [len(s) for s in splits] == [20] * 10
    assert np.array_equal(np.sort(np.concatenate(splits)), np.arange(200))


def test_stratified_folds_hand_case():
    # Same pairs 0-3, different 4-7, two folds: each class cut in two runs in file order.
    splits, folding = fold_splits([True] * 4 + [False] * 4, folds=2)
    assert folding == "stratified" and [s.tolist() for s in splits] == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_alternating_pairs_keep_insightfaces_contiguous_folds():
    issame = np.arange(6000) % 2 == 0  # the published .bin order: every contiguous fold holds both classes
    splits, folding = fold_splits(issame)
    assert folding == "contiguous"
    assert [s.tolist() for s in splits] == [s.tolist() for s in kfold_splits(6000, 10)]
    assert verification_report(np.where(issame, 0.5, -0.5), issame)["folding"] == "contiguous"


def test_a_set_too_small_to_fold_by_class_warns(caplog: pytest.LogCaptureFixture):
    issame = [True] * 8 + [False] * 12  # 8 same pairs cannot reach 10 folds: stratified all the same (8 folds of both)
    with caplog.at_level("WARNING", logger="lafs.evaluation"):
        splits, folding = fold_splits(issame)
    assert folding == "stratified" and "8 same and 12 different pairs cannot give each of 10 folds" in caplog.text
    assert sum(0 < np.asarray(issame)[s].sum() < s.size for s in splits) == 8
    caplog.clear()
    with caplog.at_level("WARNING", logger="lafs.evaluation"):  # one pair per fold: left-one-out, nothing to say
        assert fold_splits([True, False, True, True, False, False], folds=6)[1] == "contiguous"
    assert caplog.text == ""


# -------------------------------------------------------------- insightface's squared-L2 grid protocol (reference) --


def _grid_best_train_accuracy(dist: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    # insightface calculate_accuracy: predict same when dist < threshold; argmax takes the first (smallest) distance.
    thresholds = np.arange(0, 4, 0.01)
    accuracies = np.array([np.mean(np.less(dist, t) == issame) for t in thresholds])
    best = int(np.argmax(accuracies))
    return float(thresholds[best]), float(accuracies[best])


def _grid_kfold(similarities: np.ndarray, issame: np.ndarray, folds: int = 10) -> tuple[float, list[float]]:
    """insightface's calculate_roc accuracy with KFold(n_splits=folds, shuffle=False), written from its description."""
    dist = 2.0 - 2.0 * similarities  # squared L2 distance of unit vectors
    n = len(dist)
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    test_acc, train_acc = [], []
    for i in range(folds):
        test = np.zeros(n, dtype=bool)
        test[bounds[i] : bounds[i + 1]] = True
        threshold, accuracy = _grid_best_train_accuracy(dist[~test], issame[~test])
        train_acc.append(accuracy)
        test_acc.append(float(np.mean(np.less(dist[test], threshold) == issame[test])))
    return float(np.mean(test_acc)), train_acc


def test_exact_search_never_below_grid_on_training_folds():
    # The exact search reaches at least the grid's training accuracy in every fold (the held-out accuracy may go
    # either way: a better training split need not generalise better).
    rng = np.random.default_rng(7)
    for _ in range(5):
        issame = rng.random(300) < 0.5
        similarities = np.clip(np.where(issame, 0.35, 0.1) + rng.normal(0, 0.15, 300), -1, 1)
        _, grid_train = _grid_kfold(similarities, issame)
        for test, grid_acc in zip(kfold_splits(300, 10), grid_train, strict=True):
            train = np.ones(300, dtype=bool)
            train[test] = False
            assert best_threshold(similarities[train], issame[train])[1] >= grid_acc - 1e-12
        result = kfold_accuracy(similarities, issame)
        grid_accuracy, _ = _grid_kfold(similarities, issame)
        assert abs(result["accuracy"] - grid_accuracy) < 0.05  # same protocol, same ballpark


def test_equal_to_grid_when_scores_sit_on_the_grid():
    # Distances halfway between grid steps (k * 0.01 + 0.005), so every split the exact search can make, the grid
    # makes too. Each of the 10 folds holds the same six distances in a different order (so no held-out score lies
    # between two training scores) and the best split is unique:
    #   0.205 S, 0.405 S, 0.605 D, 0.705 D, 0.805 S, 1.005 D -> "same" below 0.5 errs only on 0.805 S (5/6);
    #   "same" below 0.9 errs on 0.605 and 0.705 (4/6); every other split is worse.
    rng = np.random.default_rng(1)
    dist = np.array([0.205, 0.405, 0.605, 0.705, 0.805, 1.005])
    same = np.array([True, True, False, False, True, False])
    order = np.concatenate([rng.permutation(6) for _ in range(10)])
    similarities = 1.0 - dist[order] / 2.0
    issame = same[order]
    grid_accuracy, grid_train = _grid_kfold(similarities, issame)
    result = kfold_accuracy(similarities, issame)
    assert result["accuracy"] == pytest.approx(grid_accuracy) == pytest.approx(5 / 6)
    for test, grid_acc in zip(kfold_splits(60, 10), grid_train, strict=True):
        train = np.ones(60, dtype=bool)
        train[test] = False
        assert best_threshold(similarities[train], issame[train])[1] == pytest.approx(grid_acc)


# ---------------------------------------------------------------------------------------------------------- ROC --

# 4 same pairs (0.9, 0.8, 0.6, 0.3) and 4 different pairs (0.7, 0.5, 0.4, 0.2). Operating points, threshold descending
# ("same" when >= threshold), as (FAR, TAR):
#   inf (0, 0) | 0.9 (0, .25) | 0.8 (0, .5) | 0.7 (.25, .5) | 0.6 (.25, .75) | 0.5 (.5, .75) | 0.4 (.75, .75)
#   | 0.3 (.75, 1) | 0.2 (1, 1)
# AUC: .25*.5 + .25*.75 + .25*.75 + .25*1 = .75 (= 12 of 16 same/different orderings right).
# EER: FAR - (1 - TAR) is -.25 at (0, .5)... reaches 0 exactly at (.25, .75): EER .25.
# TAR@FAR<=0: .5; <=.1: .5; <=.25: .75; <=.5: .75; <=.8: 1.
HAND_SIMILARITIES = [0.9, 0.7, 0.8, 0.5, 0.6, 0.4, 0.3, 0.2]
HAND_ISSAME = [True, False, True, False, True, False, True, False]


def test_roc_curve_hand_example():
    far, tar, thresholds = roc_curve(HAND_SIMILARITIES, HAND_ISSAME)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    np.testing.assert_array_equal(far, [0, 0, 0, 0.25, 0.25, 0.5, 0.75, 0.75, 1])
    np.testing.assert_array_equal(tar, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 1, 1])
    assert roc_auc(far, tar) == pytest.approx(0.75)
    assert equal_error_rate(HAND_SIMILARITIES, HAND_ISSAME) == pytest.approx(0.25)
    assert tar_at_far(HAND_SIMILARITIES, HAND_ISSAME, (0.0, 0.1, 0.25, 0.5, 0.8)) == {
        0.0: 0.5,
        0.1: 0.5,
        0.25: 0.75,
        0.5: 0.75,
        0.8: 1.0,
    }


def test_eer_interpolates_across_a_tie():
    # same 0.9, 0.8, 0.5, 0.5; different 0.5, 0.5, 0.3, 0.1. Points: (0,0) (0,.25) (0,.5) (.5,1) (.75,1) (1,1).
    # FAR - (1 - TAR): -.5 at (0, .5), +.5 at (.5, 1); halfway, (.25, .75): EER .25.
    # AUC: .5 * (.5 + 1) / 2 + .25 + .25 = .875 (14 of 16 orderings, the 4 tied ones counting half).
    similarities = [0.9, 0.8, 0.5, 0.5, 0.5, 0.5, 0.3, 0.1]
    issame = [True, True, True, True, False, False, False, False]
    assert equal_error_rate(similarities, issame) == pytest.approx(0.25)
    assert roc_auc(*roc_curve(similarities, issame)[:2]) == pytest.approx(0.875)


def test_eer_interpolation_uneven_segment():
    # same 0.9, 0.5, 0.5; different 0.5, 0.1. Points: (0,0) (0,1/3) (.5,1) (1,1).
    # Segment (0,1/3) -> (.5,1): FAR = .5 s, FRR = 2/3 - 2/3 s; equal at s = 4/7: EER 2/7.
    assert equal_error_rate([0.9, 0.5, 0.5, 0.5, 0.1], [True, True, True, False, False]) == pytest.approx(2 / 7)


def test_perfect_separation():
    similarities = [0.9, 0.8, 0.7, 0.2, 0.1, -0.3]
    issame = [True, True, True, False, False, False]
    far, tar, _ = roc_curve(similarities, issame)
    assert roc_auc(far, tar) == 1.0
    assert equal_error_rate(similarities, issame) == 0.0
    assert tar_at_far(similarities, issame, (0.0, 1e-4, 1e-3, 1e-2, 1e-1)) == {
        0.0: 1.0,
        1e-4: 1.0,
        1e-3: 1.0,
        1e-2: 1.0,
        1e-1: 1.0,
    }


def test_chance_level_cases():
    # All scores equal: one step (0,0) -> (1,1).
    same = [True, False, True, False]
    assert roc_auc(*roc_curve([0.3] * 4, same)[:2]) == 0.5
    assert equal_error_rate([0.3] * 4, same) == 0.5
    # Interleaved: same 4, 1; different 3, 2. Points (0,0) (0,.5) (.5,.5) (1,.5) (1,1): AUC .5, EER .5 at (.5, .5).
    similarities = [4.0, 3.0, 2.0, 1.0]
    issame = [True, False, False, True]
    assert roc_auc(*roc_curve(similarities, issame)[:2]) == 0.5
    assert equal_error_rate(similarities, issame) == 0.5


def test_tar_at_far_unresolvable_targets():
    # 4 different pairs: the smallest non-zero FAR is 0.25; targets below it fall back to the FAR-0 points.
    assert far_target_resolvable(HAND_ISSAME, (1e-4, 0.1, 0.25, 0.5)) == {
        1e-4: False,
        0.1: False,
        0.25: True,
        0.5: True,
    }
    assert tar_at_far(HAND_SIMILARITIES, HAND_ISSAME, (1e-4,)) == {1e-4: 0.5}
    # LFW-sized: 3,000 different pairs resolve 1e-3 but not 1e-4.
    issame = np.arange(6000) % 2 == 0
    assert far_target_resolvable(issame) == {1e-4: False, 1e-3: True, 1e-2: True, 1e-1: True}


def test_far_key_is_the_one_spelling_of_every_report():
    assert [far_key(t) for t in (1e-6, 1e-4, 0.001, 0.1)] == ["1e-06", "1e-04", "1e-03", "1e-01"]
    report = verification_report(HAND_SIMILARITIES, HAND_ISSAME, folds=2, far_targets=(0.5,))
    assert list(report["tar_at_far"]) == list(report["tar_at_far_resolvable"]) == [far_key(0.5)] == ["5e-01"]


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([0.1, 0.2], [True, True])


def test_roc_auc_matches_rank_statistic_on_random_data():
    rng = np.random.default_rng(5)
    issame = rng.random(500) < 0.4
    similarities = np.round(rng.normal(np.where(issame, 0.4, 0.0), 0.3), 2)
    pos, neg = similarities[issame], similarities[~issame]
    mann_whitney = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (
        pos.size * neg.size
    )
    assert roc_auc(*roc_curve(similarities, issame)[:2]) == pytest.approx(mann_whitney)


# ------------------------------------------------------------------------------------------------------- report --


def test_verification_report_is_json():
    rng = np.random.default_rng(2)
    issame = np.arange(200) % 2 == 0
    similarities = np.where(issame, 0.5, 0.1) + rng.normal(0, 0.2, 200)
    report = verification_report(similarities, issame)
    decoded = json.loads(json.dumps(report, allow_nan=False))
    assert decoded == report
    assert set(report["tar_at_far"]) == {"1e-04", "1e-03", "1e-02", "1e-01"}
    assert report["tar_at_far_resolvable"] == {"1e-04": False, "1e-03": False, "1e-02": True, "1e-01": True}
    assert report["num_pairs"] == 200 and report["num_same"] == 100 and report["num_different"] == 100
    assert report["accuracy"] == kfold_accuracy(similarities, issame)["accuracy"]
    assert (report["best_threshold"], report["best_accuracy"]) == best_threshold(similarities, issame)
    assert 0.5 < report["auc"] <= 1.0 and 0.0 <= report["eer"] < 0.5


def test_verification_report_single_class():
    # Only same pairs. Training on {0.5, 0.6} puts the threshold at their minimum, 0.5, which calls the held-out 0.3
    # and 0.4 different (0/2); training on {0.3, 0.4} gives 0.3 and the held-out pairs are right (2/2): mean 0.5.
    report = verification_report([0.3, 0.4, 0.5, 0.6], [True] * 4, folds=2)
    json.dumps(report, allow_nan=False)
    assert report["accuracy"] == 0.5 and report["fold_thresholds"] == [0.5, 0.3]
    assert (report["best_threshold"], report["best_accuracy"]) == (0.3, 1.0)
    assert report["auc"] is None and report["eer"] is None and report["tar_at_far"] is None


# ---------------------------------------------------------------------------------------------------- embedding --


def _tiny_model(size: int = 8, dim: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, dim), nn.Dropout(0.5))


def _images(count: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_embed_images_flip_sum_and_batching():
    model = _tiny_model()
    images = _images(7)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [-1, 1]
    model.eval()
    with torch.no_grad():
        plain = model(x).numpy()
        flipped = model(torch.flip(x, dims=[3])).numpy()
    model.train()
    no_flip = embed_images(model, images, flip=False)
    with_flip = embed_images(model, images, batch_size=3)
    assert no_flip.dtype == np.float32 and no_flip.shape == (7, 5)
    np.testing.assert_allclose(no_flip, plain, rtol=1e-5, atol=1e-5)  # dropout off: eval mode
    np.testing.assert_allclose(with_flip, plain + flipped, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embed_images(model, list(images), batch_size=1), with_flip, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embed_images(model, images, batch_size=100), with_flip, rtol=1e-5, atol=1e-5)


def test_embed_images_restores_training_modes():
    model = _tiny_model()
    model.train()
    model[2].eval()  # a mixed state comes back as it was
    embed_images(model, _images(2))
    assert model.training and model[1].training and not model[2].training
    model.eval()
    embed_images(model, _images(2))
    assert not any(m.training for m in model.modules())


def test_embed_images_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        embed_images(_tiny_model(), np.zeros((2, 8, 8, 3), dtype=np.float32))


def test_evaluate_pairs_end_to_end():
    model = _tiny_model()
    images = _images(20)
    issame = np.arange(10) % 2 == 0
    report = evaluate_pairs(model, images, issame, batch_size=6, folds=5)
    embeddings = embed_images(model, images)
    expected = verification_report(pair_similarities(embeddings), issame, folds=5)
    assert report["num_pairs"] == 10 and report["accuracy"] == pytest.approx(expected["accuracy"])
    assert math.isfinite(report["auc"])
    json.dumps(report, allow_nan=False)
    with pytest.raises(ValueError, match="2 per pair"):
        evaluate_pairs(model, images[:19], issame)
