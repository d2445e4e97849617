"""Face-verification metrics on pair sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW in insightface's ``.bin`` format).

Pairs are scored by the cosine similarity of their two embeddings and a pair is predicted "same" when its similarity
is at or above a threshold. The headline number is insightface's protocol: 10 contiguous folds in file order, the
threshold chosen on nine folds and the accuracy measured on the tenth, mean and (population) standard deviation over
the ten. A file whose order leaves a contiguous fold with one class only (all same pairs first, as many pair lists
and CSV exports are) would make that protocol meaningless (30 % with AUC 0.62 on such a file): its folds are then
stratified instead (`fold_splits`), and every report says which folding it used. insightface thresholds the squared
L2 distance of the normalised embeddings, ``d = 2 - 2 cos``, on the grid
``np.arange(0, 4, 0.01)`` and predicts "same" when ``d < t``; that is a decreasing map of the cosine, so every split
of the pairs a distance threshold makes, a cosine threshold makes too, and accuracies are the same. Here the threshold
is searched exactly (midpoints between sorted distinct similarities) instead of on a grid, so the accuracy reached on
the training folds is never below the grid's; the held-out accuracy can differ from insightface's only where the grid
cannot separate two similarities or where the two searches break ties differently.

The metrics need only numpy; torch is imported only by `embed_images` and `evaluate_pairs`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_FAR_TARGETS = (1e-4, 1e-3, 1e-2, 1e-1)
CONTIGUOUS, STRATIFIED = "contiguous", "stratified"  # the two foldings `fold_splits` chooses between

logger = logging.getLogger("lafs.evaluation")


# --------------------------------------------------------------------------------------------------------- inputs --


def _scores_and_labels(similarities: Any, issame: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(similarities, dtype=np.float64)
    labels = np.asarray(issame)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"similarities and issame must be 1-D, got shapes {scores.shape} and {labels.shape}")
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} similarities but {labels.size} issame labels")
    if scores.size == 0:
        raise ValueError("no pairs")
    if not np.all(np.isfinite(scores)):
        raise ValueError("similarities must be finite (a NaN usually means a NaN embedding)")
    if labels.dtype != np.bool_:
        if not np.all(np.isin(labels, (0, 1))):
            raise ValueError("issame must hold booleans (or 0/1)")
        labels = labels.astype(bool)
    return scores, labels


# ----------------------------------------------------------------------------------------------------- similarity --


def pair_similarities(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity (P,) of the pairs in ``embeddings`` (2P, D), pair ``i`` being rows ``2i`` and ``2i + 1``.

    Rows are L2-normalised first (in float64); a zero row stays zero, so its pairs get similarity 0, not NaN.
    Results are clipped to [-1, 1] against rounding.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (2P, D), got shape {emb.shape}")
    if emb.shape[0] % 2:
        raise ValueError(f"embeddings need an even number of rows (pairs are rows 2i, 2i+1), got {emb.shape[0]}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    return np.clip(np.einsum("ij,ij->i", unit[0::2], unit[1::2]), -1.0, 1.0)


# ------------------------------------------------------------------------------------------------------- accuracy --


def accuracy_at(similarities: Any, issame: Any, threshold: float) -> float:
    """Fraction of pairs classified correctly when "same" is predicted for ``similarity >= threshold``."""
    scores, labels = _scores_and_labels(similarities, issame)
    return float(np.mean((scores >= threshold) == labels))


def best_threshold(similarities: Any, issame: Any) -> tuple[float, float]:
    """``(threshold, accuracy)`` with the highest accuracy over every way a threshold can split the pairs.

    With the distinct similarities sorted, ``u_0 < ... < u_{m-1}``, the candidates are ``u_0`` (every pair "same"),
    the midpoints ``(u_{k-1} + u_k) / 2`` and the next float above ``u_{m-1}`` (no pair "same"): one per split, so
    the search is exact, in O(P log P). Ties go to the smallest threshold reaching the maximum. (insightface's grid
    search takes the first maximum over increasing distances, i.e. the largest cosine threshold; the two can differ
    only when several splits reach the same training accuracy.)
    """
    scores, labels = _scores_and_labels(similarities, issame)
    values, inverse = np.unique(scores, return_inverse=True)
    positives = np.bincount(inverse, weights=labels, minlength=values.size)
    negatives = np.bincount(inverse, weights=~labels, minlength=values.size)
    # Split k (0..m) predicts "same" for values[k:]: correct = negatives below + positives at or above.
    neg_below = np.concatenate(([0.0], np.cumsum(negatives)))
    pos_below = np.concatenate(([0.0], np.cumsum(positives)))
    correct = neg_below + (pos_below[-1] - pos_below)
    k = int(np.argmax(correct))  # first maximum = smallest threshold
    if k == 0:
        threshold = values[0]
    elif k == values.size:
        threshold = np.nextafter(values[-1], np.inf)
    else:
        low, high = values[k - 1], values[k]
        mid = 0.5 * low + 0.5 * high
        threshold = mid if low < mid <= high else high  # adjacent floats: the midpoint may round onto `low`
    return float(threshold), float(correct[k] / scores.size)


def kfold_splits(num_pairs: int, folds: int = 10) -> list[np.ndarray]:
    """Test indices of each fold: contiguous, in order, the first ``num_pairs % folds`` folds one pair longer.

    These are scikit-learn's ``KFold(n_splits=folds, shuffle=False)`` folds, which insightface uses; the published
    ``.bin`` files are ordered so that such folds are balanced. ``folds=1`` is one fold that is also its own training
    set (insightface's ``LFold`` does the same).
    """
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    if num_pairs < folds:
        raise ValueError(f"cannot split {num_pairs} pairs into {folds} folds")
    sizes = np.full(folds, num_pairs // folds, dtype=np.int64)
    sizes[: num_pairs % folds] += 1
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(folds)]


def stratified_splits(issame: np.ndarray, folds: int) -> list[np.ndarray]:
    """Test indices (sorted) of each fold, each class spread over the folds: the pairs of each class, in file order,
    cut into ``folds`` near-equal contiguous runs (``np.array_split``), fold k the union of the classes' runs k.
    Every fold holds both classes when each class has at least ``folds`` pairs."""
    labels = np.asarray(issame, dtype=bool)
    runs = [np.array_split(np.flatnonzero(labels == value), folds) for value in (True, False)]
    return [np.sort(np.concatenate([same, different])) for same, different in zip(*runs, strict=True)]


def fold_splits(issame: Any, folds: int = 10) -> tuple[list[np.ndarray], str]:
    """The test folds of k-fold verification and their folding's name: insightface's contiguous folds
    (`kfold_splits`) when each holds both classes, so published ``.bin`` figures stay comparable; else
    `stratified_splits`. A set with fewer than ``folds`` pairs of a class cannot give every fold both classes: a
    warning says its accuracy is unreliable (stratified folds are still used while none is empty). One pair per
    fold (the smallest sets) is left-one-out: contiguous, nothing to say."""
    labels = np.asarray(issame, dtype=bool).reshape(-1)
    contiguous = kfold_splits(labels.size, folds)
    if folds in (1, labels.size) or all(0 < labels[test].sum() < test.size for test in contiguous):
        return contiguous, CONTIGUOUS
    same = int(labels.sum())
    stratified = stratified_splits(labels, folds)
    if min(same, labels.size - same) < folds:
        logger.warning(
            f"{same} same and {labels.size - same} different pairs cannot give each of {folds} folds both classes: "
            "the k-fold accuracy of this set is unreliable (use more pairs of the rarer class)"
        )
    if all(test.size for test in stratified):
        return stratified, STRATIFIED
    return contiguous, CONTIGUOUS


def kfold_accuracy(similarities: Any, issame: Any, folds: int = 10) -> dict[str, Any]:
    """insightface's verification accuracy: k-fold, threshold chosen on the other folds, accuracy on the held-out one.

    Folds are `fold_splits`: insightface's `kfold_splits` (contiguous, in file order, no shuffling) unless the file
    order leaves a fold with one class, then stratified. For each fold the threshold is
    `best_threshold` of the other folds and the accuracy is `accuracy_at` that threshold on the fold. insightface
    thresholds the squared L2 distance of normalised embeddings, ``d = 2 - 2 cos`` (a cosine threshold ``t`` is the
    distance threshold ``2 - 2t``), a monotone map of the cosine, so the accuracies are the same; our thresholds are
    searched exactly rather than on insightface's 0.01 grid.

    Returns ``{"accuracy": mean, "accuracy_std": population std (numpy's default, as insightface reports),
    "thresholds": cosine threshold per fold, "fold_accuracies": accuracy per fold, "folding": "contiguous" or
    "stratified"}``.
    """
    scores, labels = _scores_and_labels(similarities, issame)
    splits, folding = fold_splits(labels, folds)
    thresholds: list[float] = []
    accuracies: list[float] = []
    for test in splits:
        train = np.ones(scores.size, dtype=bool)
        if folds > 1:
            train[test] = False
        threshold, _ = best_threshold(scores[train], labels[train])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(scores[test], labels[test], threshold))
    return {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "thresholds": thresholds,
        "fold_accuracies": accuracies,
        "folding": folding,
    }


# ------------------------------------------------------------------------------------------------------------ ROC --


def roc_curve(similarities: Any, issame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(far, tar, thresholds)`` at every distinct threshold, thresholds descending.

    Point ``j`` predicts "same" for ``similarity >= thresholds[j]``; FAR is the fraction of different-identity pairs
    predicted "same", TAR the fraction of same-identity pairs predicted "same". The first point has threshold
    ``+inf`` and is (0, 0); then one point per distinct similarity, the last (1, 1). Both classes must be present.
    """
    scores, labels = _scores_and_labels(similarities, issame)
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        raise ValueError(f"a ROC needs both classes; got {num_pos} same and {num_neg} different pairs")
    values, inverse = np.unique(scores, return_inverse=True)
    positives = np.bincount(inverse, weights=labels, minlength=values.size)[::-1]
    negatives = np.bincount(inverse, weights=~labels, minlength=values.size)[::-1]
    tar = np.concatenate(([0.0], np.cumsum(positives))) / num_pos
    far = np.concatenate(([0.0], np.cumsum(negatives))) / num_neg
    thresholds = np.concatenate(([np.inf], values[::-1]))
    # Cumulative sums of whole numbers are exact; pin the end so 1.0 is exactly 1.0.
    tar[-1] = far[-1] = 1.0
    return far, tar, thresholds


def tar_at_far(
    similarities: Any, issame: Any, far_targets: Sequence[float] = DEFAULT_FAR_TARGETS
) -> dict[float, float]:
    """TAR at each FAR target: the highest TAR among the ROC's operating points whose FAR is <= the target.

    No interpolation: an operating point is a real threshold. Since the ROC only rises, this is the TAR of the
    lowest threshold whose FAR does not exceed the target. When the target is below the smallest non-zero FAR,
    ``1 / num_different_pairs`` (e.g. 1e-4 on LFW's 3,000 different pairs), only FAR = 0 operating points qualify and
    the value is the TAR at FAR 0; `far_target_resolvable` says which targets are in that case.
    """
    far, tar, _ = roc_curve(similarities, issame)
    result: dict[float, float] = {}
    for target in far_targets:
        if not target >= 0:
            raise ValueError(f"FAR targets must be >= 0, got {target}")
        # far is non-decreasing, so the admissible points are a prefix and tar is highest at its end.
        last = int(np.searchsorted(far, target, side="right")) - 1
        result[float(target)] = float(tar[last])
    return result


def far_target_resolvable(issame: Any, far_targets: Sequence[float] = DEFAULT_FAR_TARGETS) -> dict[float, bool]:
    """Whether each FAR target is at least ``1 / num_different_pairs``, the smallest non-zero FAR a set can show.

    For an unresolvable target `tar_at_far` reports the TAR at FAR = 0, which says less than the target suggests.
    """
    num_neg = int(np.size(issame) - np.count_nonzero(issame))
    # The same comparison `tar_at_far` makes between a FAR and a target.
    return {float(t): bool(num_neg > 0 and 1.0 / num_neg <= t) for t in far_targets}


def roc_auc(far: Any, tar: Any) -> float:
    """Area under the ROC by the trapezoid rule (ties between classes count one half, as in the Mann-Whitney U)."""
    x = np.asarray(far, dtype=np.float64)
    y = np.asarray(tar, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError("far and tar must be 1-D arrays of the same length, at least 2")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def equal_error_rate(similarities: Any, issame: Any) -> float:
    """The error rate where FAR equals FRR = 1 - TAR.

    ``g = FAR - (1 - TAR)`` rises along the ROC from -1 at (0, 0) to +1 at (1, 1). If an operating point has
    ``g = 0`` its FAR is the EER; otherwise the EER is where the straight segment between the last point with
    ``g < 0`` and the first with ``g > 0`` crosses FAR = 1 - TAR (linear interpolation of both rates).
    """
    far, tar, _ = roc_curve(similarities, issame)
    gap = far - (1.0 - tar)
    j = int(np.argmax(gap >= 0))  # first point at or past the crossing; gap[-1] = 1 so one exists
    if gap[j] == 0:
        return float(far[j])
    lam = -gap[j - 1] / (gap[j] - gap[j - 1])
    return float(far[j - 1] + lam * (far[j] - far[j - 1]))


# --------------------------------------------------------------------------------------------------------- report --


def far_key(target: float) -> str:
    """The report key of a false-accept rate, as every report and tool spells it: ``"1e-04"`` for 0.0001."""
    return f"{target:.0e}"


def verification_report(
    similarities: Any, issame: Any, folds: int = 10, far_targets: Sequence[float] = DEFAULT_FAR_TARGETS
) -> dict[str, Any]:
    """Every metric in one JSON-serialisable dict (plain floats, ints, bools, lists, str keys).

    Keys: ``accuracy``, ``accuracy_std`` and ``folding`` (`kfold_accuracy`), ``fold_thresholds``, ``best_accuracy`` and
    ``best_threshold`` (`best_threshold` on all pairs: an optimistic, in-sample figure), ``tar_at_far`` and
    ``tar_at_far_resolvable`` keyed like ``"1e-04"``, ``auc``, ``eer``, ``num_pairs``, ``num_same``,
    ``num_different``. Thresholds are cosine similarities. When one class is missing the ROC metrics are ``None``.
    """
    scores, labels = _scores_and_labels(similarities, issame)
    kfold = kfold_accuracy(scores, labels, folds)
    threshold, accuracy = best_threshold(scores, labels)
    num_same = int(labels.sum())
    report: dict[str, Any] = {
        "accuracy": kfold["accuracy"],
        "accuracy_std": kfold["accuracy_std"],
        "fold_thresholds": kfold["thresholds"],
        "folding": kfold["folding"],
        "best_accuracy": accuracy,
        "best_threshold": threshold,
        "tar_at_far": None,
        "tar_at_far_resolvable": {far_key(t): ok for t, ok in far_target_resolvable(labels, far_targets).items()},
        "auc": None,
        "eer": None,
        "num_pairs": int(labels.size),
        "num_same": num_same,
        "num_different": int(labels.size - num_same),
    }
    if 0 < num_same < labels.size:
        far, tar, _ = roc_curve(scores, labels)
        report["tar_at_far"] = {far_key(t): v for t, v in tar_at_far(scores, labels, far_targets).items()}
        report["auc"] = roc_auc(far, tar)
        report["eer"] = equal_error_rate(scores, labels)
    return report


# ------------------------------------------------------------------------------------------------------ embedding --


def embed_images(
    model: torch.nn.Module,
    images: Sequence[np.ndarray] | np.ndarray,
    batch_size: int = 128,
    flip: bool = True,
    device: torch.device | str = "cpu",
    landmarks: np.ndarray | None = None,
    flip_permutation: np.ndarray | None = None,
) -> np.ndarray:
    """Embeddings (N, D) float32 of aligned H x W x 3 uint8 RGB faces.

    Images are scaled to [-1, 1] (`lafs.data.collate.normalize_images`) and passed as ``model(batch)``, in eval mode
    under ``torch.inference_mode()``; the project's encoders then use their own landmarks: the template, right for
    aligned faces and their mirror images, or a learned predictor. With ``landmarks`` (N, K, 2) pixels of the images
    (the template or MediaPipe's, `lafs.evaluation.landmarks`) the call is ``model(batch, landmarks)``, and a
    mirrored image gets its landmarks mirrored with ``flip_permutation`` (K,), the encoder's landmark set's. With
    ``flip=True`` the result is the SUM of the embeddings of each image and of its horizontal flip, insightface's
    convention (its accuracy is computed after normalising the sum). The training mode of every submodule is restored
    afterwards. ``model`` should already be on ``device``.
    """
    import torch

    from lafs.data.collate import normalize_images
    from lafs.views.geometry import flip_batch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("no images")
    if landmarks is not None and len(landmarks) != len(images):
        raise ValueError(f"{len(landmarks)} landmark rows for {len(images)} images")
    if landmarks is not None and flip and flip_permutation is None:
        raise ValueError("mirrored images need the landmark set's flip_permutation to mirror their landmarks")
    permutation = None if flip_permutation is None else torch.tensor(np.array(flip_permutation), device=device)
    modes = {module: module.training for module in model.modules()}
    outputs: list[np.ndarray] = []
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = np.stack([np.asarray(image) for image in images[start : start + batch_size]])
                if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[-1] != 3:
                    raise ValueError(f"images must be H x W x 3 uint8, got a batch {chunk.shape} {chunk.dtype}")
                pixels = torch.from_numpy(chunk).permute(0, 3, 1, 2).contiguous().to(device)
                batch = normalize_images(pixels)
                points = None
                if landmarks is not None:
                    rows = np.array(landmarks[start : start + batch_size], dtype=np.float32)  # a writable copy
                    points = torch.from_numpy(rows).to(device)
                embedding = model(batch) if points is None else model(batch, points)
                if flip and points is None:
                    embedding = embedding + model(torch.flip(batch, dims=[3]))
                elif flip:
                    assert points is not None and permutation is not None  # checked on entry
                    # As training flips: x -> W - x, slots renamed so each keeps its landmark id.
                    everyone = torch.ones(batch.shape[0], dtype=torch.bool, device=batch.device)
                    mirrored, mirrored_points, _ = flip_batch(batch, points, everyone, permutation)
                    embedding = embedding + model(mirrored, mirrored_points)
                outputs.append(embedding.float().cpu().numpy())
    finally:
        for module, training in modes.items():
            module.training = training
    return np.concatenate(outputs).astype(np.float32, copy=False)


def evaluate_pairs(
    model: torch.nn.Module,
    images: Sequence[np.ndarray] | np.ndarray,
    issame: Any,
    batch_size: int = 128,
    flip: bool = True,
    device: torch.device | str = "cpu",
    folds: int = 10,
    landmarks: np.ndarray | None = None,
    flip_permutation: np.ndarray | None = None,
) -> dict[str, Any]:
    """`verification_report` of a pair set: images ``2i`` and ``2i + 1`` are pair ``i`` (a loaded ``.bin``);
    ``landmarks`` and ``flip_permutation`` as for `embed_images`."""
    labels = np.asarray(issame)
    if len(images) != 2 * labels.size:
        raise ValueError(f"{len(images)} images for {labels.size} pairs; need 2 per pair")
    embeddings = embed_images(
        model, images, batch_size, flip, device, landmarks=landmarks, flip_permutation=flip_permutation
    )
    return verification_report(pair_similarities(embeddings), labels, folds=folds)
