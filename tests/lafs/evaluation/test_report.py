"""The verification report says which folding each set's k-fold accuracy used."""

from __future__ import annotations

import numpy as np

from lafs.evaluation import verification_report
from lafs.evaluation.report import build_report, format_markdown, format_table


def _report(**sets: np.ndarray) -> dict:
    entries = {name: verification_report(np.where(issame, 0.8, -0.8), issame) for name, issame in sets.items()}
    return build_report({"input": "enc"}, entries, flip=True)


def test_the_report_names_the_folding():
    alternating, grouped = np.arange(40) % 2 == 0, np.arange(40) < 20
    plain = _report(lfw=alternating)
    assert "Folds: contiguous in file order (insightface's)." in format_markdown(plain)
    assert "Folds" not in format_table(plain)  # the usual case adds nothing to the terminal table
    mixed = _report(lfw=alternating, mine=grouped)
    note = "Folds: stratified for mine (its pair order puts one class in a contiguous fold)"
    assert note in format_markdown(mixed) and note in format_table(mixed)
