"""Evaluation: face-verification metrics on pair sets (insightface's ``.bin`` LFW, CFP-FP, AgeDB-30, CALFW, CPLFW)."""

from lafs.evaluation.report import evaluate_sets, format_table, threshold_at_far, write_report
from lafs.evaluation.verification import (
    DEFAULT_FAR_TARGETS,
    accuracy_at,
    best_threshold,
    embed_images,
    equal_error_rate,
    evaluate_pairs,
    far_key,
    far_target_resolvable,
    fold_splits,
    kfold_accuracy,
    kfold_splits,
    pair_similarities,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_report,
)

__all__ = [
    "DEFAULT_FAR_TARGETS",
    "accuracy_at",
    "best_threshold",
    "embed_images",
    "equal_error_rate",
    "evaluate_pairs",
    "evaluate_sets",
    "far_key",
    "far_target_resolvable",
    "fold_splits",
    "format_table",
    "kfold_accuracy",
    "kfold_splits",
    "pair_similarities",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "threshold_at_far",
    "verification_report",
    "write_report",
]
