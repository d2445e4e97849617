"""Verification reports over several pair sets: metrics, operating thresholds, speed, and the files they are saved as.

    folder/report.json   everything: the encoder, the protocol and, per set, `verification_report` + thresholds + speed
    folder/report.md     one Markdown table row per set
    folder/roc.png       every set's ROC on a log-FAR axis

Each file is written to a temporary name beside its target and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lafs.errors import DataError
from lafs.evaluation.verification import (
    DEFAULT_FAR_TARGETS,
    _scores_and_labels,
    embed_images,
    far_key,
    pair_similarities,
    roc_curve,
    verification_report,
)
from lafs.files import read_json, write_atomic

if TYPE_CHECKING:
    import torch

SIMILARITY = "cosine of L2-normalised embeddings (flip: image + mirrored image summed)"
ROC_POINTS = 200  # log-spaced FARs the stored ROC is sampled at (the full curve of LFW would be 6,000 points)
UNRESOLVABLE_NOTE = "* FAR target below 1 / (different pairs) of the set: the value is the TAR at FAR = 0."

PairSet = tuple[Sequence[np.ndarray] | np.ndarray, Any]


# ---------------------------------------------------------------------------------------------------- thresholds --


def threshold_at_far(similarities: Any, issame: Any, far: float) -> float:
    """The cosine threshold of the operating point `tar_at_far` reports for the FAR target ``far``.

    Predicting "same" for ``similarity >= threshold`` gives exactly that point's FAR (<= ``far``) and TAR: the lowest
    ROC threshold whose FAR does not exceed the target. When only the point with no pair "same" qualifies (the most
    similar pair is a different-identity one and ``far`` is below ``1 / num_different``), the threshold is the next
    float above the highest similarity, finite, as `best_threshold` spells "no pair same". Both classes must be present.
    """
    if not far >= 0:
        raise ValueError(f"FAR target must be >= 0, got {far}")
    scores, labels = _scores_and_labels(similarities, issame)
    rates, _, thresholds = roc_curve(scores, labels)
    last = int(np.searchsorted(rates, far, side="right")) - 1  # the same point `tar_at_far` picks
    if last == 0:
        return float(np.nextafter(scores.max(), np.inf))
    return float(thresholds[last])


def _sampled_roc(similarities: np.ndarray, issame: np.ndarray) -> dict[str, list[float]]:
    # TAR at ROC_POINTS log-spaced FARs from 1 / num_different to 1, `tar_at_far` style: the points a log plot shows.
    far, tar, _ = roc_curve(similarities, issame)
    num_neg = int(issame.size - issame.sum())
    grid = np.unique(np.concatenate((np.geomspace(1.0 / num_neg, 1.0, ROC_POINTS), far[far > 0])))
    if grid.size > ROC_POINTS:  # keep the curve's own FARs only when there are few of them
        grid = np.geomspace(1.0 / num_neg, 1.0, ROC_POINTS)
    index = np.searchsorted(far, grid, side="right") - 1
    return {"far": [float(x) for x in grid], "tar": [float(y) for y in tar[index]]}


# ---------------------------------------------------------------------------------------------------- evaluation --


def evaluate_sets(
    model: torch.nn.Module,
    sets: Mapping[str, PairSet],
    batch_size: int = 128,
    flip: bool = True,
    device: torch.device | str = "cpu",
    folds: int = 10,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    progress: Callable[[int], None] | None = None,
    landmarks: Mapping[str, np.ndarray] | None = None,
    flip_permutation: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Per set name, its `verification_report` plus ``threshold_at_far``, ``roc``, ``seconds``, ``images_per_second``.

    ``sets`` maps a name to ``(images, issame)`` as `lafs.data.pairs.load_bin` returns them (pair ``i`` is images
    ``2i`` and ``2i + 1``); ``landmarks`` maps a set's name to its images' landmarks (N, K, 2) pixels, mirrored with
    ``flip_permutation`` (`embed_images`), for a model that takes them. Images are embedded `embed_images`-style in
    batches of ``batch_size``; ``progress(n)`` is called after each batch with the number of images it held.
    ``seconds`` is the wall time of embedding the set (the metrics excluded) and ``images_per_second`` is images /
    seconds (with ``flip`` each image is two forward passes).
    ``threshold_at_far`` ({"1e-04": cosine threshold, ...}) and ``roc`` ({"far": [...], "tar": [...]}, sampled at
    log-spaced FARs) are ``None`` when a set lacks one of the two classes.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    results: dict[str, dict[str, Any]] = {}
    for name, (images, issame) in sets.items():
        labels = np.asarray(issame, dtype=bool)
        if len(images) != 2 * labels.size:
            raise ValueError(f"{name}: {len(images)} images for {labels.size} pairs; need 2 per pair")
        start = time.perf_counter()
        chunks = []
        points = None if landmarks is None else landmarks.get(name)
        for first in range(0, len(images), batch_size):
            batch = images[first : first + batch_size]
            rows = None if points is None else points[first : first + batch_size]
            chunks.append(embed_images(model, batch, batch_size, flip, device, rows, flip_permutation))
            if progress is not None:
                progress(len(batch))
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        embeddings = np.concatenate(chunks)
        if not np.all(np.isfinite(embeddings)):
            raise DataError(f"{name}: the encoder produced non-finite embeddings")
        similarities = pair_similarities(embeddings)
        report = verification_report(similarities, labels, folds=folds, far_targets=far_targets)
        both = 0 < labels.sum() < labels.size
        report["threshold_at_far"] = (
            {far_key(t): threshold_at_far(similarities, labels, t) for t in far_targets} if both else None
        )
        report["roc"] = _sampled_roc(similarities, labels) if both else None
        report["num_images"] = len(images)
        report["embedding_dim"] = int(embeddings.shape[1])
        report["seconds"] = seconds
        report["images_per_second"] = len(images) / seconds if seconds > 0 else None
        results[name] = report
    return results


def encoder_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"input": path, **config.json}`` of an encoder folder or run directory (its ``encoder/``); else the path."""
    from lafs.export.weights import encoder_folder  # timm and the models: only when there is a folder to read

    path = Path(path)
    info: dict[str, Any] = {"input": str(path)}
    with contextlib.suppress(DataError, OSError, ValueError):  # an .onnx file, or a folder without a readable record
        config = read_json(encoder_folder(path) / "config.json")
        if isinstance(config, dict):
            info.update({k: v for k, v in config.items() if k != "input"})
    return info


def build_report(
    encoder: Mapping[str, Any],
    sets: Mapping[str, dict[str, Any]],
    flip: bool,
    folds: int = 10,
    landmarks: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report.json record: ``{"encoder": ..., "protocol": {...}, "sets": {...}}``, plus the fields of
    ``landmarks`` (`lafs.landmarks.provenance.LandmarkChoice.record`: ``landmark_source`` used, ``trained_with``)."""
    protocol = {"flip": bool(flip), "folds": int(folds), "similarity": SIMILARITY}
    return {**(landmarks or {}), "encoder": dict(encoder), "protocol": protocol, "sets": dict(sets)}


# ------------------------------------------------------------------------------------------------------- tables --


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _row_cells(name: str, entry: Mapping[str, Any]) -> tuple[list[str], bool]:
    accuracy = f"{100 * entry['accuracy']:.2f} ± {100 * entry['accuracy_std']:.2f}"
    tars = []
    starred = False
    resolvable = entry.get("tar_at_far_resolvable") or {}
    for key in (far_key(t) for t in DEFAULT_FAR_TARGETS):
        value = (entry.get("tar_at_far") or {}).get(key)
        cell = _percent(value)
        if value is not None and not resolvable.get(key, True):
            cell += "*"
            starred = True
        tars.append(cell)
    auc = "-" if entry.get("auc") is None else f"{entry['auc']:.4f}"
    return [name, str(entry["num_pairs"]), accuracy, *tars, auc, _percent(entry.get("eer"))], starred


_HEADERS = ["set", "pairs", "accuracy ± std", "TAR@FAR 1e-4", "1e-3", "1e-2", "1e-1", "AUC", "EER"]


def _landmark_lines(report: Mapping[str, Any]) -> list[str]:
    if "landmark_source" not in report:  # a report built without them (a training run's own evaluation)
        return []
    trained = report.get("trained_with", "?")
    return [f"Landmarks: {report['landmark_source']} (the encoder was trained with {trained}).", ""]


def folding_note(sets: Mapping[str, Mapping[str, Any]]) -> str:
    """Which folds the sets' k-fold accuracies used: insightface's contiguous ones, or stratified where the file
    order put one class in a contiguous fold (`lafs.evaluation.verification.fold_splits`)."""
    stratified = [name for name, entry in sets.items() if entry.get("folding") == "stratified"]
    if not stratified:
        return "Folds: contiguous in file order (insightface's)."
    return (
        f"Folds: stratified for {', '.join(stratified)} (its pair order puts one class in a contiguous fold), "
        "contiguous in file order (insightface's) for any other set."
    )


def format_markdown(report: Mapping[str, Any]) -> str:
    """report.md: a title, the protocol and one table row per set (percentages), with a footnote for starred TARs."""
    protocol = report["protocol"]
    lines = [
        "# Verification report",
        "",
        f"Encoder: `{report['encoder'].get('input', '?')}`"
        + (f" ({report['encoder']['architecture']})" if report["encoder"].get("architecture") else ""),
        "",
        f"Protocol: {protocol['folds']}-fold accuracy, {protocol['similarity']}, "
        f"flip {'on' if protocol['flip'] else 'off'}. Accuracy, TAR and EER in %. {folding_note(report['sets'])}",
        "",
        *_landmark_lines(report),
        "| " + " | ".join(_HEADERS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(_HEADERS) - 1)) + "|",
    ]
    any_star = False
    for name, entry in report["sets"].items():
        cells, starred = _row_cells(name, entry)
        any_star |= starred
        lines.append("| " + " | ".join(cells) + " |")
    if any_star:
        lines += ["", "\\" + UNRESOLVABLE_NOTE]
    return "\n".join(lines) + "\n"


def format_table(report: Mapping[str, Any]) -> str:
    """Plain-text table of the report (percentages, plus images/s), with the footnote when a TAR is starred."""
    headers = [*_HEADERS, "images/s"]
    rows = []
    any_star = False
    for name, entry in report["sets"].items():
        cells, starred = _row_cells(name, entry)
        any_star |= starred
        speed = entry.get("images_per_second")
        rows.append([*cells, "-" if speed is None else f"{speed:.1f}"])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)]
    if any_star:
        lines.append(UNRESOLVABLE_NOTE)
    if any(entry.get("folding") == "stratified" for entry in report["sets"].values()):
        lines.append(folding_note(report["sets"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- files --


def _roc_png(report: Mapping[str, Any]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)  # the Agg canvas, without touching pyplot's global backend
    axes = figure.add_subplot()
    for name, entry in report["sets"].items():
        roc = entry.get("roc")
        if roc:
            auc = entry.get("auc")
            label = name if auc is None else f"{name} (AUC {auc:.4f})"
            axes.step(roc["far"], roc["tar"], where="post", label=label)
    axes.set_xscale("log")
    axes.set_xlim(right=1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false accept rate (FAR)")
    axes.set_ylabel("true accept rate (TAR)")
    axes.set_title("Verification ROC")
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(report: Mapping[str, Any], folder: str | os.PathLike[str]) -> None:
    """Write report.json, report.md and roc.png into ``folder`` (created), each atomically.

    Every file is rendered in memory first, so a rendering error writes nothing. Raises `DataError` when the folder
    cannot be written.
    """
    folder = Path(folder)
    files = {
        "report.json": (json.dumps(report, indent=2, allow_nan=False) + "\n").encode(),
        "report.md": format_markdown(report).encode(),
        "roc.png": _roc_png(report),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            write_atomic(folder / name, data)
    except OSError as error:
        raise DataError(f"{folder}: cannot write the report: {error.strerror or error}") from None
