"""The few-shot results: per (arm, shots, regulariser) the mean and spread over seeds, as JSON, Markdown and a plot."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lafs.files import write_atomic

GROUP = ("arm", "shots", "regulariser")
ARM_COLOURS = {"lafs": "C0", "dino": "C1", "none": "C2"}


def summarise(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arm, shots, regulariser), in first-seen order: seeds, mean and std (over seeds, ddof 1 when
    there are several) of accuracy and AUC."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record[key] for key in GROUP), []).append(record)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        row["seeds"] = len(members)
        for metric in ("accuracy", "auc"):
            values = np.array([m[metric] for m in members if m[metric] is not None], dtype=np.float64)
            row[f"{metric}_mean"] = float(values.mean()) if values.size else None
            row[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
        rows.append(row)
    return rows


def _cell(mean: float | None, std: float, seeds: int) -> str:
    """``mean ± std`` in %; one seed has no spread to show."""
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" if seeds < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def format_markdown(rows: Sequence[Mapping[str, Any]], setup: Mapping[str, Any]) -> str:
    """The results table (accuracy and AUC in %, mean ± std over seeds) under a line describing the setup."""
    lines = [
        "# Few-shot verification on unseen identities",
        "",
        ", ".join(f"{key}: {value}" for key, value in setup.items()),
        "",
        "shots 0 = the encoder before fine-tuning (arm `none`: untrained). Accuracy: 10-fold, mean ± std over seeds.",
        "",
        "| arm | shots | regulariser | seeds | accuracy % | AUC % |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['arm']} | {row['shots']} | {row['regulariser']} | {row['seeds']} | "
            f"{_cell(row['accuracy_mean'], row['accuracy_std'], row['seeds'])} | "
            f"{_cell(row['auc_mean'], row['auc_std'], row['seeds'])} |"
        )
    return "\n".join(lines) + "\n"


def _plain(row: Mapping[str, Any]) -> bool:
    """A row of the margin head alone: fine-tuned without a regulariser, or not fine-tuned (shots 0)."""
    return row["regulariser"] in ("none", "-")


def plot_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Accuracy and AUC against shots per arm (margin head alone; shots 0: before fine-tuning), and where
    regularisers ran, their accuracy beside the plain run of the same arm and shots; error bars: the spread over
    seeds; chance at 50 %."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    shots = sorted({int(r["shots"]) for r in rows})
    regularised = {(r["arm"], r["shots"]) for r in rows if not _plain(r)}
    bars = [r for r in rows if (r["arm"], r["shots"]) in regularised and r["shots"]]
    figure, axes = plt.subplots(1, 3 if bars else 2, figsize=(15 if bars else 10, 4.2), squeeze=False)
    for axis, metric in zip(axes[0], ("accuracy", "auc"), strict=False):
        for arm in dict.fromkeys(r["arm"] for r in rows):
            line = [r for r in rows if r["arm"] == arm and _plain(r) and r[f"{metric}_mean"] is not None]
            line.sort(key=lambda r: r["shots"])
            axis.errorbar([shots.index(r["shots"]) for r in line], [100 * r[f"{metric}_mean"] for r in line],
                          yerr=[100 * r[f"{metric}_std"] for r in line], marker="o", capsize=3, label=arm,
                          color=ARM_COLOURS.get(arm, "C3"))  # fmt: skip
        axis.axhline(50, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(shots)), [str(s) for s in shots])
        axis.set_xlabel("labelled images per training identity (0: before fine-tuning)")
        axis.set_title(f"{'accuracy' if metric == 'accuracy' else 'AUC'} on unseen identities (%)")
        axis.legend(title="pretraining")
    if bars:
        axis = axes[0][2]
        x = np.arange(len(bars))
        means = [100 * (r["accuracy_mean"] or 0.0) for r in bars]
        axis.bar(x, means, yerr=[100 * r["accuracy_std"] for r in bars], capsize=3,
                 color=[ARM_COLOURS.get(r["arm"], "C3") for r in bars])  # fmt: skip
        axis.set_xticks(x, [f"{r['arm']} {r['shots']}-shot\n{r['regulariser']}" for r in bars], fontsize=7)
        axis.set_ylim(max(0.0, min(means) - 10), min(100.0, max(means) + 10))
        axis.set_title("regularisers: accuracy (%)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_results(records: Sequence[Mapping[str, Any]], setup: Mapping[str, Any], folder: Path) -> list[Path]:
    """``results.json`` (setup, records, summary), ``results.md`` and ``results.png`` in ``folder``."""
    rows = summarise(records)
    document = {"setup": dict(setup), "records": list(records), "summary": rows}
    return [
        write_atomic(folder / "results.json", json.dumps(document, indent=2) + "\n"),
        write_atomic(folder / "results.md", format_markdown(rows, setup)),
        write_atomic(folder / "results.png", plot_png(rows)),
    ]
