"""Step 3: fit StandardScaler + LogisticRegression and choose the decision threshold on training data only."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from etl.evaluate import classification_metrics
from etl.features import FEATURE_COLUMNS, ID_COLUMN, TARGET_COLUMN

log = logging.getLogger(__name__)

CV_FOLDS = 5
CV_METRICS = ("accuracy", "precision", "recall", "f1", "specificity", "roc_auc")


@dataclass
class TrainResult:
    """The fitted pipeline, its threshold, and the cross-validation figures from the training split."""

    pipeline: Pipeline
    threshold: float
    params: dict[str, Any]
    cv: dict[str, dict[str, float]]
    duration_seconds: float


def build_pipeline(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("scaler", StandardScaler()),
            ("classifier", LogisticRegression(max_iter=1000, random_state=seed)),
        ]
    )


def choose_threshold(y_true: np.ndarray, proba: np.ndarray, target_recall: float) -> float:
    """The highest threshold whose recall for class 1 (``proba >= threshold``) reaches ``target_recall``.

    With the positives' probabilities sorted high to low, predicting ``>= p[k-1]`` catches at least ``k``
    positives; ``k = ceil(target * positives)`` is the fewest that reach the target.
    """
    positives = np.sort(proba[y_true == 1])[::-1]
    if positives.size == 0:
        raise ValueError("no positive rows to choose a threshold from")
    k = max(1, math.ceil(target_recall * positives.size - 1e-12))
    return float(positives[k - 1])


def _folds(train: pd.DataFrame, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    n_splits = min(CV_FOLDS, int(train.groupby(TARGET_COLUMN)[ID_COLUMN].nunique().min()))
    n_splits = max(2, n_splits)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    y = train[TARGET_COLUMN].to_numpy()
    return list(splitter.split(np.zeros(len(train)), y, train[ID_COLUMN].to_numpy()))


def train_model(train: pd.DataFrame, *, seed: int = 42, target_recall: float = 0.98) -> TrainResult:
    """Fit the model on the training split and pick its threshold from out-of-fold probabilities.

    Args:
        train: clean training rows (features, ``Id`` and ``Class``).
        seed: seeds the CV folds and the classifier.
        target_recall: recall for malignant the threshold must reach on out-of-fold predictions.

    Returns:
        TrainResult with the pipeline fitted on all training rows, the threshold, and the grouped CV mean
        and std of each metric (each fold scored with the chosen threshold).
    """
    started = time.monotonic()
    X = train.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float)
    y = train[TARGET_COLUMN].to_numpy()
    folds = _folds(train, seed)
    oof = np.zeros(len(train))
    for fit_idx, val_idx in folds:
        fold_model = build_pipeline(seed).fit(X[fit_idx], y[fit_idx])
        oof[val_idx] = fold_model.predict_proba(X[val_idx])[:, 1]
    threshold = choose_threshold(y, oof, target_recall)
    per_fold = [classification_metrics(y[v], oof[v], threshold) for _, v in folds]
    cv = {
        name: {
            "mean": float(np.mean([m[name] for m in per_fold])),
            "std": float(np.std([m[name] for m in per_fold])),
        }
        for name in CV_METRICS
    }
    pipeline = build_pipeline(seed).fit(X, y)
    params = {
        "model": "StandardScaler+LogisticRegression",
        "classifier": {k: v for k, v in pipeline.named_steps["classifier"].get_params().items()},
        "seed": seed,
        "target_recall": target_recall,
        "cv_folds": len(folds),
        "features": list(FEATURE_COLUMNS),
    }
    duration = time.monotonic() - started
    log.info(
        "trained on %d rows in %.2fs: threshold %.4f, CV recall %.3f±%.3f, CV accuracy %.3f±%.3f",
        len(train),
        duration,
        threshold,
        cv["recall"]["mean"],
        cv["recall"]["std"],
        cv["accuracy"]["mean"],
        cv["accuracy"]["std"],
    )
    return TrainResult(pipeline, threshold, params, cv, duration)
