"""A fixed development split of an identity folder: training identities, and pair sets of held-aside identities.

    written = make_dev_split(DevSplitConfig(input=Path("cfp349_aligned"), output=Path("dev")))

Held-aside identities are a seeded draw from the sorted identity names, so the same command always gives the same
split; they are never trained on, and model choices are made on their pairs only. Written to ``output``:

- ``train.csv``: ``path,label`` of every image of the training identities (labels 0 .. C - 1), for ``data.path``;
- ``held_aside.csv``: the same for the held-aside identities;
- ``held_aside_ff.bin``: frontal-frontal pairs of held-aside identities (CFP's FF protocol), an insightface ``.bin``;
- ``held_aside_fp.bin``: frontal-profile pairs (CFP's FP), when file names mark profiles (``profile_*``);
- ``split.json``: the identities on each side, the seed and the pair counts.

Pairs alternate same and different, so each of insightface's contiguous folds holds both in equal numbers. Same pairs
are drawn without repetition from all same-identity pairs of the kind; different pairs from two held-aside people.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lafs.data.folder import scan_image_folder, write_list_file
from lafs.data.images import read_image_file
from lafs.data.pairs import write_bin
from lafs.errors import ConfigError, DataError
from lafs.fewshot.split import interleave
from lafs.files import write_atomic

logger = logging.getLogger("lafs.fewshot")

FILES = ("train.csv", "held_aside.csv", "held_aside_ff.bin", "held_aside_fp.bin", "split.json")


@dataclass
class DevSplitConfig:
    input: Path  # aligned identity folder: <identity>/<image>
    output: Path  # the split's folder (FILES)
    held_aside: int = 100  # identities never trained on, verified only
    seed: int = 0  # which identities are held aside
    pairs: int = 2000  # pairs per set, half same, half different
    profile_prefix: str = "profile"  # a file whose name starts with this is a profile; the others are frontal


def is_profile(path: Path, prefix: str) -> bool:
    """A profile view by its file name (CFP's ``profile_01.jpg``); an empty prefix marks none."""
    return bool(prefix) and path.name.startswith(prefix)


def draw_pairs(
    labels: np.ndarray, first: np.ndarray, second: np.ndarray, count: int, seed: int
) -> list[tuple[int, int, bool]]:
    """``count`` pairs (i, j, same) with i from positions ``first`` and j from ``second`` (i != j), alternating
    same / different, half each, without repetition; ``labels`` (N,) gives identities.

    With ``first`` equal to ``second`` a pair and its reverse count once.
    """
    rng = np.random.default_rng(seed)
    half = count // 2
    symmetric = np.array_equal(first, second)
    same_all = [
        (int(i), int(j))
        for i in first
        for j in second
        if labels[i] == labels[j] and i != j and (not symmetric or i < j)
    ]
    if len(same_all) < half:
        raise DataError(f"the held-aside identities give {len(same_all)} same-identity pairs of a kind, {half} needed")
    same = [same_all[k] for k in rng.choice(len(same_all), size=half, replace=False)]
    different: set[tuple[int, int]] = set()
    attempts = 0
    while len(different) < half:  # rejection sampling: different pairs vastly outnumber same ones
        attempts += 1
        if attempts > 100 * count:
            raise DataError(f"could not draw {half} different-identity pairs (too few held-aside identities)")
        i, j = int(rng.choice(first)), int(rng.choice(second))
        if labels[i] != labels[j]:
            different.add((min(i, j), max(i, j)) if symmetric else (i, j))
    return interleave(same, different, rng)


def make_dev_split(cfg: DevSplitConfig) -> list[Path]:
    """Write the split (module docstring) and return the files written."""
    if cfg.pairs < 20 or cfg.pairs % 2:
        raise ConfigError(f"--pairs must be an even number >= 20 (10 folds of same and different), got {cfg.pairs}")
    paths, labels, names = scan_image_folder(cfg.input)
    if not 2 <= cfg.held_aside <= len(names) - 2:
        raise ConfigError(f"--held-aside must lie in [2, {len(names) - 2}] for {len(names)} identities")
    held = np.sort(np.random.default_rng(cfg.seed).permutation(len(names))[: cfg.held_aside])
    is_held = np.isin(labels, held)
    train_positions, held_positions = np.flatnonzero(~is_held), np.flatnonzero(is_held)

    def relabel(rows: np.ndarray) -> list[int]:  # contiguous 0 .. C - 1
        return np.unique(labels[rows], return_inverse=True)[1].tolist()

    profile = np.array([is_profile(path, cfg.profile_prefix) for path in paths])
    frontal_held = held_positions[~profile[held_positions]]
    profile_held = held_positions[profile[held_positions]]
    sets = {"held_aside_ff": (frontal_held, frontal_held)}
    if len(profile_held):
        sets["held_aside_fp"] = (frontal_held, profile_held)
    # Every pair drawn and every image read before anything is written: a failure leaves no partial split.
    drawn = {name: draw_pairs(labels, first, second, cfg.pairs, cfg.seed) for name, (first, second) in sets.items()}
    needed = sorted({k for pairs in drawn.values() for a, b, _ in pairs for k in (a, b)})
    images = {i: read_image_file(paths[i], strict=True) for i in needed}
    written = [
        write_list_file(cfg.output / "train.csv", [paths[i] for i in train_positions], relabel(train_positions)),
        write_list_file(cfg.output / "held_aside.csv", [paths[i] for i in held_positions], relabel(held_positions)),
    ]
    counts = {}
    for name, pairs in drawn.items():
        write_bin(cfg.output / f"{name}.bin", [(images[a], images[b]) for a, b, _ in pairs], [s for *_, s in pairs])
        written.append(cfg.output / f"{name}.bin")
        counts[name] = len(pairs)
        logger.info(f"{name}: {len(pairs)} pairs of {len(np.unique(labels[sets[name][0]]))} identities")
    record = {
        "input": str(cfg.input.resolve()),
        "seed": cfg.seed,
        "training_identities": [names[i] for i in range(len(names)) if i not in set(held.tolist())],
        "held_aside_identities": [names[i] for i in held],
        "training_images": len(train_positions),
        "held_aside_images": len(held_positions),
        "pairs": counts,
    }
    written.append(write_atomic(cfg.output / "split.json", json.dumps(record, indent=2) + "\n"))
    return written
