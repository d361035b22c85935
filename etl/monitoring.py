"""Figures that watch a served model after training: how its inputs are distributed (recorded at training
in meta.json, compared live by the population stability index) and how its answers fare against the
outcomes reported later. Plain functions over arrays; the service (app/records/live.py) feeds them from the
prediction record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from etl.features import FEATURE_MAX, FEATURE_MIN, FEATURE_NAMES

VALUES = tuple(range(FEATURE_MIN, FEATURE_MAX + 1))  # every score a feature can take: the PSI's bins
# added to every bin's count before proportions are taken (Jeffreys' prior), so an empty bin on either side
# gives a large but finite PSI term instead of a division by zero
PSI_SMOOTHING = 0.5
# the usual reading of a PSI: below 0.1 no real shift, 0.1-0.2 a moderate one, above 0.2 a significant one
PSI_SIGNIFICANT = 0.2
QUALITY_METRICS = ("accuracy", "recall", "precision", "specificity")


def value_counts(column: np.ndarray | Sequence[int]) -> list[int]:
    """How many times each score 1-10 occurs in ``column`` (other values are not counted)."""
    values = np.asarray(column, dtype=np.int64)
    inside = values[(values >= FEATURE_MIN) & (values <= FEATURE_MAX)]
    return np.bincount(inside - FEATURE_MIN, minlength=len(VALUES)).tolist()


def feature_distribution(X: np.ndarray) -> dict[str, Any]:
    """Each feature's counts over its scores 1-10 in ``X`` (rows x the nine features, model order): the
    ``feature_distribution`` a version's meta.json records for its training rows."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"expected rows of {len(FEATURE_NAMES)} features, got shape {X.shape}")
    return {
        "rows": int(X.shape[0]),
        "values": list(VALUES),
        "counts": {name: value_counts(X[:, i]) for i, name in enumerate(FEATURE_NAMES)},
    }


def psi(expected_counts: Sequence[float], actual_counts: Sequence[float]) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts over the same bins):
    sum of (a - e) * ln(a / e) over the bins' smoothed proportions. 0 for equal distributions."""
    e = np.asarray(expected_counts, dtype=np.float64) + PSI_SMOOTHING
    a = np.asarray(actual_counts, dtype=np.float64) + PSI_SMOOTHING
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError("expected and actual counts must cover the same bins")
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def drift(reference: Mapping[str, Any], X: np.ndarray) -> dict[str, float]:
    """The PSI of each feature of ``X`` (recent inputs, model column order) against ``reference`` (a
    ``feature_distribution``). Features the reference does not cover are left out."""
    counts = reference.get("counts", {})
    return {
        name: psi(counts[name], value_counts(X[:, i]))
        for i, name in enumerate(FEATURE_NAMES)
        if name in counts and len(counts[name]) == len(VALUES)
    }


def confusion(predicted: np.ndarray | Sequence[int], actual: np.ndarray | Sequence[int]) -> dict[str, int]:
    """True/false positives and negatives (malignant = 1 is the positive class)."""
    p = np.asarray(predicted, dtype=np.int8)
    y = np.asarray(actual, dtype=np.int8)
    return {
        "tp": int(np.sum((p == 1) & (y == 1))),
        "fp": int(np.sum((p == 1) & (y == 0))),
        "tn": int(np.sum((p == 0) & (y == 0))),
        "fn": int(np.sum((p == 0) & (y == 1))),
    }


def quality(counts: Mapping[str, int]) -> dict[str, float | None]:
    """Accuracy, recall, precision and specificity from a ``confusion``; None where the denominator is 0
    (recall without a malignant outcome, precision without a malignant prediction, ...)."""
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    return {
        "accuracy": ratio(tp + tn, tp + fp + tn + fn),
        "recall": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "specificity": ratio(tn, tn + fp),
    }
