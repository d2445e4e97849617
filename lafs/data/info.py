"""Describing a face dataset: format, counts, image sizes, and whether its colours look RGB or BGR.

Counts come from the index, folder, list or pickle; image sizes and colours from a sample of images spread evenly
over the dataset, in which records that fail to read or decode are counted as bad. Face crops are mostly skin, whose
red channel is brighter than its blue: images averaging B > R are most likely stored in BGR order (MS1MV3's .rec).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lafs.data.open import open_dataset
from lafs.data.pairs import decode_entry, read_bin
from lafs.errors import DataError

MIN_COLOUR_GAP = 2.0  # mean R and B closer than this (of 255) give no verdict: grey or non-face images


def sample_indices(count: int, sample: int) -> list[int]:
    """Up to ``sample`` distinct indices spread evenly over ``range(count)``, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(count, sample)).round().astype(int)).tolist()


def colour_verdict(mean_r: float, mean_b: float, bgr: bool | None) -> str:
    """One line on the channel order from the mean red and blue of face images read with --bgr, without, or (None)
    from a source that has no such option (a .bin)."""
    if abs(mean_r - mean_b) < MIN_COLOUR_GAP:
        return "R ~ B: no verdict (grey or non-face images?)"
    if mean_r > mean_b:
        return "R > B: --bgr looks right" if bgr else "R > B: looks RGB, as it should"
    if bgr is None:
        return "B > R: looks BGR: its images were stored with the channels swapped"
    if bgr:
        return "B > R with --bgr: looks RGB: drop --bgr / data.bgr=false"
    return "B > R: looks BGR: pass --bgr / data.bgr=true"


def sample_rows(read: Callable[[int], np.ndarray], count: int, sample: int, bgr: bool | None) -> list[tuple[str, str]]:
    """Rows on image sizes, colours and bad records for a sample of the ``count`` images ``read(i)`` returns."""
    indices = sample_indices(count, sample)
    sizes: Counter[str] = Counter()
    means, bad = [], 0
    for i in indices:
        try:
            image = read(i)
        except DataError:
            bad += 1
            continue
        sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
        means.append(image.reshape(-1, 3).mean(axis=0))
    rows = [("sampled", f"{len(indices)} images, evenly spread")]
    if means:
        mean_r, _, mean_b = np.mean(means, axis=0).tolist()
        rows += [
            ("image size", ", ".join(f"{size} ({n})" for size, n in sizes.most_common())),
            ("mean R / B", f"{mean_r:.1f} / {mean_b:.1f}" + (" (read with --bgr)" if bgr else "")),
            ("colour", colour_verdict(mean_r, mean_b, bgr)),
        ]
    else:
        rows.append(("colour", "no sampled image decodes"))
    rows.append(("bad records", f"{bad} of {len(indices)} sampled"))
    return rows


def describe_bin(path: Path, sample: int) -> list[tuple[str, str]]:
    """(name, value) rows describing a ``.bin`` pair set (counts, and a sample's sizes and colours)."""
    entries, issame = read_bin(path)
    same = int(issame.sum())

    def read(i: int) -> np.ndarray:
        return decode_entry(entries[i])

    return [
        ("format", ".bin pair set (insightface)"),
        ("records", f"{len(entries)} images"),
        ("pairs", f"{len(issame)} ({same} same, {len(issame) - same} different)"),
        *sample_rows(read, len(entries), sample, bgr=None),
    ]


def describe_dataset(path: Path, bgr: bool, sample: int) -> list[tuple[str, str]]:
    """(name, value) rows describing a .rec, image folder or list file: format, counts, a sample's sizes, colours."""
    # max_bad_fraction=1: sampling counts bad records instead of stopping at them.
    dataset = open_dataset(path, bgr=bgr, image_size=None, landmarks="none", max_bad_fraction=1.0)
    if hasattr(dataset, "layout"):
        kind = {"classic": "insightface: header + identity records", "flat": "im2rec: labels in image headers"}
        fmt = f".rec, {dataset.layout} layout ({kind[dataset.layout]})"
    else:
        fmt = "image folder" if path.is_dir() else "path,label list file"
    per_identity = np.bincount(dataset.labels)
    used = per_identity[per_identity > 0]
    identities = f"{len(used)} (images each: min {used.min()}, median {np.median(used):g}, max {used.max()})"
    if dataset.num_classes > len(used):
        identities += f"; {dataset.num_classes} classes, {dataset.num_classes - len(used)} without images"

    def read(i: int) -> np.ndarray:
        # The dataset's own loader, not dataset[i]: indexing would stand in the next good record for a bad one.
        return dataset.load(i)["image"]

    records = f"{len(dataset)} images"
    left_out = getattr(getattr(dataset, "guard", None), "skipped", 0)  # a .rec's records whose label does not read
    if left_out:
        records += f" ({left_out} more left out: {'its label does' if left_out == 1 else 'their labels do'} not read)"
    return [
        ("format", fmt),
        ("records", records),
        ("identities", identities),
        *sample_rows(read, len(dataset), sample, bgr),
    ]


def describe(path: Path, bgr: bool = False, sample: int = 200) -> list[tuple[str, str]]:
    """(name, value) rows describing the dataset at ``path``."""
    rows = describe_bin(path, sample) if path.suffix == ".bin" else describe_dataset(path, bgr, sample)
    return [("path", str(path)), *rows]
