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


def _cell(mean: float | None, std: float) -> str:
    return "n/a" if mean is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


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
            f"{_cell(row['accuracy_mean'], row['accuracy_std'])} | {_cell(row['auc_mean'], row['auc_std'])} |"
        )
    return "\n".join(lines) + "\n"


def plot_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Accuracy and AUC per (arm, shots, regulariser) as bars with the spread over seeds; chance at 50 %."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    # 0-shot: the encoder before fine-tuning
    labels = [
        f"{r['arm']}\n{r['shots']}-shot\n{r['regulariser']}" if r["shots"] else f"{r['arm']}\n0-shot"
        for r in rows
    ]
    x = np.arange(len(rows))
    figure, axes = plt.subplots(1, 2, figsize=(max(6.0, 0.9 * len(rows) + 2), 4), sharey=True)
    for axis, metric in zip(axes, ("accuracy", "auc"), strict=True):
        means = [100 * (r[f"{metric}_mean"] or 0.0) for r in rows]
        spreads = [100 * r[f"{metric}_std"] for r in rows]
        axis.bar(x, means, yerr=spreads, capsize=3, color=[ARM_COLOURS.get(r["arm"], "C3") for r in rows])
        axis.axhline(50, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(x, labels, fontsize=7)
        axis.set_title(f"{'accuracy' if metric == 'accuracy' else 'AUC'} on unseen identities (%)")
        axis.set_ylim(40, 100)
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
