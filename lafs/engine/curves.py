"""The learning curve of a run: every validation accuracy in its log against the step, drawn to one PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from lafs.engine.run_log import read_log
from lafs.files import write_atomic

CURVE_FILE = "learning_curve.png"


def accuracy_keys(records: list[dict[str, Any]]) -> list[str]:
    """The logged validation accuracies (``<set>_accuracy``, ``mean_accuracy``, ...), in first-seen order; spreads
    (``*_std``) and running bests (``best_*``) are left out."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key.endswith("accuracy") and not key.startswith("best_") and value is not None:
                keys[key] = None
    return list(keys)


def plot_learning_curve(run_dir: Path, title: str = "") -> Path | None:
    """Draw ``run_dir/learning_curve.png`` (accuracy in % against the optimiser step, one line per validation key)
    from ``run_dir/log.jsonl``, atomically; None when the log holds no validation yet."""
    records = read_log(run_dir)
    keys = accuracy_keys(records)
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for key in keys:
        points = [(r["step"], 100.0 * r[key]) for r in records if r.get(key) is not None]
        axes.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key.removesuffix("_accuracy") or key)
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("verification accuracy (%)")
    axes.set_title(title or run_dir.name)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return write_atomic(run_dir / CURVE_FILE, buffer.getvalue())
