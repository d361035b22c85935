"""Step 4: score a model on its held-out split with its stored threshold; one metrics dict out."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.pipeline import Pipeline

from etl.features import FEATURE_COLUMNS, TARGET_COLUMN

HEADLINE = ("accuracy", "precision", "recall", "f1", "roc_auc")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, specificity, ROC-AUC, confusion matrix and support.

    A row is predicted malignant when ``proba >= threshold``.
    """
    y_pred = (proba >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "specificity": _ratio(tn, tn + fp),
        "roc_auc": float(roc_auc_score(y_true, proba)) if len(set(y_true.tolist())) == 2 else 0.0,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "support": {"benign": int((y_true == 0).sum()), "malignant": int((y_true == 1).sum())},
    }


def predict_proba(pipeline: Pipeline, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(pipeline.predict_proba(frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float))[:, 1])


def evaluate_model(
    pipeline: Pipeline, holdout: pd.DataFrame, threshold: float, meta: dict[str, Any]
) -> dict[str, Any]:
    """Score ``pipeline`` on ``holdout`` and assemble the metrics.json dict.

    Args:
        pipeline: the fitted model.
        holdout: the version's held-out rows.
        threshold: the decision threshold stored with the model.
        meta: the version's meta.json (for CV figures, row counts, data sha256 and timestamps).

    Returns:
        accuracy, precision, recall, f1 at the top level (the seed's names), plus specificity, roc_auc,
        confusion_matrix, support, cv, threshold, rows, data_sha256, model_version, timestamps and
        library versions.
    """
    y = holdout[TARGET_COLUMN].to_numpy()
    metrics = classification_metrics(y, predict_proba(pipeline, holdout), threshold)
    metrics.update(
        {
            "threshold": threshold,
            "cv": meta.get("cv", {}),
            "rows": meta.get("rows", {}),
            "data_sha256": meta.get("data_sha256"),
            "data_source": meta.get("data_source"),
            "model_version": meta.get("version"),
            "trained_at": meta.get("created_at"),
            "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": {
                "python": platform.python_version(),
                "scikit-learn": sklearn.__version__,
                "pandas": pd.__version__,
                "numpy": np.__version__,
            },
        }
    )
    return metrics
