"""Step 4: scoring: classification and calibration metrics, intervals, and the nested-CV summary.

Everything here is plain arithmetic on labels and probabilities; the models come from ``etl.scorer``.
"""

from __future__ import annotations

import math
import platform
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

HEADLINE = ("accuracy", "precision", "recall", "f1", "roc_auc")
# the nested estimates recorded in metrics.json, each with mean, std and a 95% interval
NESTED_METRICS = ("recall", "precision", "specificity", "f1", "accuracy", "roc_auc", "brier", "ece")
ECE_BINS = 10
BOOTSTRAP_SAMPLES = 400
Z95 = 1.959963984540054


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def wilson_interval(k: float, n: float, z: float = Z95) -> list[float]:
    """Wilson score interval of a proportion ``k / n`` (``k`` may be an average over repeats)."""
    if n <= 0:
        return [0.0, 1.0]
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def expected_calibration_error(
    y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """ECE over ten equal-width probability bins: the weighted mean |mean predicted - observed rate|."""
    w = np.ones(len(proba)) if weights is None else weights
    total = float(w.sum())
    if total == 0:
        return 0.0
    bins = np.minimum((proba * ECE_BINS).astype(int), ECE_BINS - 1)
    ece = 0.0
    for b in np.unique(bins):
        m = bins == b
        wb = float(w[m].sum())
        if wb:
            ece += wb / total * abs(float(np.dot(w[m], proba[m])) / wb - float(np.dot(w[m], y_true[m])) / wb)
    return ece


def reliability_bins(y_true: np.ndarray, proba: np.ndarray) -> list[dict[str, Any]]:
    """The reliability diagram in the ECE's ten equal-width bins: per bin the rows in it, their mean predicted
    probability and the observed malignant share (None for an empty bin)."""
    y_true, proba = np.asarray(y_true, dtype=float), np.asarray(proba, dtype=float)
    bins = np.minimum((proba * ECE_BINS).astype(int), ECE_BINS - 1)
    table = []
    for b in range(ECE_BINS):
        m = bins == b
        rows = int(m.sum())
        table.append(
            {
                "lower": b / ECE_BINS,
                "upper": (b + 1) / ECE_BINS,
                "rows": rows,
                "mean_predicted": float(proba[m].mean()) if rows else None,
                "observed": float(y_true[m].mean()) if rows else None,
            }
        )
    return table


def _counts(y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray) -> tuple[float, float, float, float]:
    tp = float(w[(y_pred == 1) & (y_true == 1)].sum())
    fp = float(w[(y_pred == 1) & (y_true == 0)].sum())
    fn = float(w[(y_pred == 0) & (y_true == 1)].sum())
    tn = float(w[(y_pred == 0) & (y_true == 0)].sum())
    return tn, fp, fn, tp


def _scores(
    y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray, w: np.ndarray | None = None
) -> dict[str, float]:
    w = np.ones(len(y_true)) if w is None else w
    tn, fp, fn, tp = _counts(y_true, y_pred, w)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    both = len(np.unique(y_true[w > 0])) == 2
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "specificity": _ratio(tn, tn + fp),
        "roc_auc": float(roc_auc_score(y_true, proba, sample_weight=w)) if both else 0.0,
        "brier": float(np.average((proba - y_true) ** 2, weights=w)) if w.sum() else 0.0,
        "ece": expected_calibration_error(y_true, proba, w),
    }


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, specificity, ROC-AUC, Brier, ECE, confusion matrix and support.

    A row is predicted malignant when ``proba >= threshold``.
    """
    y_true = np.asarray(y_true)
    y_pred = (proba >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in _counts(y_true, y_pred, np.ones(len(y_true))))
    return {
        **_scores(y_true, proba, y_pred),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "support": {"benign": int((y_true == 0).sum()), "malignant": int((y_true == 1).sum())},
    }


def with_intervals(metrics: dict[str, Any]) -> dict[str, Any]:
    """Wilson 95% intervals of the count-based ratios of ``classification_metrics``' output."""
    cm = metrics["confusion_matrix"]
    return {
        "recall": wilson_interval(cm["tp"], cm["tp"] + cm["fn"]),
        "precision": wilson_interval(cm["tp"], cm["tp"] + cm["fp"]),
        "specificity": wilson_interval(cm["tn"], cm["tn"] + cm["fp"]),
        "accuracy": wilson_interval(cm["tp"] + cm["tn"], sum(cm.values())),
    }


def summarise_nested(
    pooled: pd.DataFrame, *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES
) -> dict[str, Any]:
    """The nested-CV estimate: per metric the mean over repeats of the pooled figure, the std across outer
    folds and a 95% interval (percentile bootstrap over patients); and the counts behind the ratios.

    Args:
        pooled: ``NestedCV.pooled()``: one row per (outer fold, scored row) with ``y``, ``proba``, ``pred``,
            ``repeat``, ``fold`` and ``group`` (the patient).
    """
    y, p, pred = pooled["y"].to_numpy(), pooled["proba"].to_numpy(), pooled["pred"].to_numpy()
    per_repeat = [
        _scores(g["y"].to_numpy(), g["proba"].to_numpy(), g["pred"].to_numpy())
        for _, g in pooled.groupby("repeat")
    ]
    per_fold = [
        _scores(g["y"].to_numpy(), g["proba"].to_numpy(), g["pred"].to_numpy())
        for _, g in pooled.groupby(["repeat", "fold"])
    ]
    codes, uniques = pd.factorize(pooled["group"])
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {name: [] for name in NESTED_METRICS}
    for _ in range(samples):
        group_weights = np.bincount(rng.integers(0, len(uniques), len(uniques)), minlength=len(uniques))
        row_weights = group_weights[codes].astype(float)
        scores = _scores(y, p, pred, row_weights)
        for name in NESTED_METRICS:
            boot[name].append(scores[name])
    metrics = {
        name: {
            "mean": float(np.mean([s[name] for s in per_repeat])),
            "std": float(np.std([s[name] for s in per_fold])),
            "ci95": [float(np.percentile(boot[name], 2.5)), float(np.percentile(boot[name], 97.5))],
        }
        for name in NESTED_METRICS
    }
    repeats = max(1, pooled["repeat"].nunique())
    malignant = int((y == 1).sum() / repeats)
    benign = int((y == 0).sum() / repeats)
    missed = float(((pred == 0) & (y == 1)).sum() / repeats)
    alarms = float(((pred == 1) & (y == 0)).sum() / repeats)
    return {
        "metrics": metrics,
        "counts": {
            "missed_cancers": {
                "mean": missed,
                "of": malignant,
                "rate": _ratio(missed, malignant),
                "wilson95": wilson_interval(missed, malignant),
            },
            "false_alarms": {
                "mean": alarms,
                "of": benign,
                "rate": _ratio(alarms, benign),
                "wilson95": wilson_interval(alarms, benign),
            },
        },
        "rows": int(len(pooled) / repeats),
        "patients": len(uniques),
        "repeats": int(repeats),
        "folds": int(pooled.groupby("repeat")["fold"].nunique().max()),
    }


def library_versions() -> dict[str, str]:
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
    }
