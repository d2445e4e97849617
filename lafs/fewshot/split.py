"""The few-shot protocol's data: identities split into seen / unseen, the unseen verification pairs, landmark rows.

Seen identities train (pretraining without labels, fine-tuning on N images each); unseen identities are only ever
verified, as pairs of their images, half of one person and half of two, so every figure measures generalisation to
people the model never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lafs.errors import ConfigError, DataError
from lafs.landmarks.cache import CacheInfo, LandmarkCache


@dataclass(frozen=True)
class IdentitySplit:
    """Which identities (names, sorted) train and which are verified; image positions into the full list."""

    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    seen_positions: np.ndarray  # (n_seen,) int64 positions of the seen images in the full sorted image list
    unseen_positions: np.ndarray  # (n_unseen,) likewise for the unseen images


def split_identities(labels: np.ndarray, names: list[str], unseen: int, seed: int) -> IdentitySplit:
    """Draw ``unseen`` identities (a seeded permutation of the sorted names) to hold out; the rest are seen.

    ``labels`` (N,) index ``names``. Both sides keep at least 2 identities: fine-tuning needs 2 classes and
    different-identity pairs need 2 people.
    """
    count = len(names)
    if not 2 <= unseen <= count - 2:
        raise ConfigError(f"--unseen must lie in [2, {count - 2}] for {count} identities, got {unseen}")
    order = sorted(range(count), key=lambda i: names[i])
    held_out = {order[i] for i in np.random.default_rng(seed).permutation(count)[:unseen]}
    is_unseen = np.isin(labels, sorted(held_out))
    return IdentitySplit(
        seen=tuple(sorted(names[i] for i in range(count) if i not in held_out)),
        unseen=tuple(sorted(names[i] for i in held_out)),
        seen_positions=np.flatnonzero(~is_unseen),
        unseen_positions=np.flatnonzero(is_unseen),
    )


def fixed_split(labels: np.ndarray, names: list[str], held_aside: list[str]) -> IdentitySplit:
    """The split a development protocol fixed (`lafs.fewshot.devset`): ``held_aside`` names are unseen, whatever
    the seed. Names missing from ``names`` are a one-line `DataError` (the split was made of another folder)."""
    missing = sorted(set(held_aside) - set(names))
    if missing:
        raise DataError(f"the split's held-aside identity {missing[0]!r} is not in the input ({len(missing)} missing)")
    held = {names.index(name) for name in held_aside}
    if not 2 <= len(held) <= len(names) - 2:
        raise ConfigError(f"a fixed split needs 2 to {len(names) - 2} held-aside identities, got {len(held)}")
    is_unseen = np.isin(labels, sorted(held))
    return IdentitySplit(
        seen=tuple(sorted(names[i] for i in range(len(names)) if i not in held)),
        unseen=tuple(sorted(names[i] for i in held)),
        seen_positions=np.flatnonzero(~is_unseen),
        unseen_positions=np.flatnonzero(is_unseen),
    )


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels (N,) renumbered 0 .. C - 1 in order of their value (a subset's classes, made contiguous)."""
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def verification_pairs(labels: np.ndarray, count: int, seed: int) -> list[tuple[int, int, bool]]:
    """``count`` pairs (i, j, same) of positions into ``labels`` (N,): half same identity, half different.

    Drawn without repetition; same and different pairs alternate, so every contiguous fold of the 10-fold protocol
    holds both kinds in equal numbers.
    """
    rng = np.random.default_rng(seed)
    half = count // 2
    same_all = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]]
    sizes = np.unique(labels, return_counts=True)[1].astype(np.int64)
    different_count = int((sizes.sum() ** 2 - (sizes**2).sum()) // 2)  # pairs of images of two people
    if len(same_all) < half or different_count < half:
        raise DataError(
            f"the unseen identities give {len(same_all)} same-identity and {different_count} different-identity "
            f"pairs; {half} of each are needed (fewer --pairs, or more --unseen)"
        )
    same = [same_all[k] for k in rng.choice(len(same_all), size=half, replace=False)]
    different: set[tuple[int, int]] = set()
    while len(different) < half:  # rejection sampling: different pairs vastly outnumber same ones
        i, j = (int(v) for v in rng.integers(0, len(labels), size=2))
        if labels[i] != labels[j]:
            different.add((min(i, j), max(i, j)))
    return interleave(same, different, rng)


def interleave(
    same: list[tuple[int, int]], different: set[tuple[int, int]], rng: np.random.Generator
) -> list[tuple[int, int, bool]]:
    """(i, j, same) pairs alternating same and different (the different ones in a seeded order), so every
    contiguous fold of the k-fold protocol holds both kinds in equal numbers."""
    others = sorted(different)
    rng.shuffle(others)
    pairs: list[tuple[int, int, bool]] = []
    for (a, b), (c, d) in zip(same, others, strict=True):
        pairs += [(a, b, True), (c, d, False)]
    return pairs


def subset_cache(full: LandmarkCache, positions: np.ndarray, output: Path) -> LandmarkCache:
    """A landmark cache at ``output`` holding rows ``positions`` of ``full`` (for a list file of those images)."""
    if not full.complete:
        raise DataError(f"{full.path}: landmark cache incomplete; run the command again to finish it")
    info = CacheInfo(f"{full.info.dataset} (subset)", len(positions), full.info.landmark_set, full.info.image_size,
                     full.info.detector)  # fmt: skip
    cache = LandmarkCache.create(output, info)
    if not cache.complete:
        cache.write(np.arange(len(positions)), full.landmarks[positions], full.found[positions])
        cache.flush()
    return cache
