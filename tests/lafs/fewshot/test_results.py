"""Few-shot results: mean and spread over seeds, the Markdown table, the plot and the JSON document."""

from __future__ import annotations

import json

import pytest

from lafs.fewshot.results import format_markdown, summarise, write_results


def _record(arm: str, seed: int, accuracy: float, auc: float | None, shots: int = 5) -> dict:
    return {"arm": arm, "shots": shots, "regulariser": "none", "seed": seed, "accuracy": accuracy, "auc": auc}


RECORDS = [
    _record("lafs", 0, 0.60, 0.64),
    _record("lafs", 1, 0.70, 0.76),
    _record("lafs", 2, 0.80, 0.82),
    _record("none", 0, 0.50, 0.51, shots=0),
]


def test_summary_is_mean_and_sample_std_over_seeds() -> None:
    lafs, untrained = summarise(RECORDS)
    assert (lafs["arm"], lafs["shots"], lafs["seeds"]) == ("lafs", 5, 3)
    assert lafs["accuracy_mean"] == pytest.approx(0.70)
    assert lafs["accuracy_std"] == pytest.approx(0.10)  # sqrt(((-.1)^2 + 0 + .1^2) / 2)
    assert lafs["auc_mean"] == pytest.approx(0.74)
    assert untrained["seeds"] == 1 and untrained["accuracy_std"] == 0.0


def test_markdown_table_in_percent() -> None:
    text = format_markdown(summarise(RECORDS), {"pairs": 600})
    assert "| lafs | 5 | none | 3 | 70.0 ± 10.0 | 74.0 ± 9.2 |" in text
    assert "pairs: 600" in text


def test_write_results_writes_json_markdown_and_png(tmp_path) -> None:
    regularised = {**_record("lafs", 0, 0.66, 0.7), "regulariser": "unpg"}  # the plot's third panel
    paths = write_results([*RECORDS, regularised, _record("dino", 0, 0.55, None)], {"seeds": "0 1 2"}, tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.md", "results.png"]
    document = json.loads((tmp_path / "results.json").read_text())
    assert len(document["records"]) == 6 and document["setup"] == {"seeds": "0 1 2"}
    assert {"arm", "shots", "seed", "regulariser", "accuracy", "auc"} <= set(document["records"][0])
    assert document["summary"][-1]["auc_mean"] is None
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
