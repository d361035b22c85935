"""Step 3: the training procedure, and the nested cross-validation that estimates how well it does.

The procedure, on a set of rows: grouped, stratified 5-fold out-of-fold decision values of
StandardScaler + LogisticRegression; the model fitted on all rows; a calibrator fitted on the out-of-fold
values (isotonic, sigmoid or none); the decision threshold chosen on the calibrated out-of-fold
probabilities as the highest one whose recall reaches TARGET_RECALL.

``nested_cv`` runs that **whole** procedure inside each training part of repeated, patient-grouped,
stratified outer folds over every row it is given, and scores each outer fold with the threshold its own
procedure chose: an estimate of future performance that rests on every patient, with nothing chosen on the
rows it is scored on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from etl.features import FEATURE_COLUMNS, ID_COLUMN, TARGET_COLUMN
from etl.scorer import Calibration, LinearModel

log = logging.getLogger(__name__)

INNER_FOLDS = 5
CALIBRATION_METHODS = ("isotonic", "sigmoid", "none")


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


def grouped_folds(
    y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds keeping each patient (group) on one side; fewer when a class has few patients."""
    per_class = min(len(np.unique(groups[y == c])) for c in (0, 1))
    n_splits = max(2, min(n_folds, per_class))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features as float, Class, Id) of a clean frame, features in the model's column order."""
    return (
        frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float),
        frame[TARGET_COLUMN].to_numpy(),
        frame[ID_COLUMN].to_numpy(),
    )


@dataclass
class Fitted:
    """One run of the procedure: the fitted model under each calibration, with the out-of-fold evidence."""

    pipeline: Pipeline
    folds: list[tuple[np.ndarray, np.ndarray]]
    oof_decision: np.ndarray
    y: np.ndarray
    calibrations: dict[str, Calibration]
    oof_proba: dict[str, np.ndarray]
    target_recall: float

    def model(self, method: str, target_recall: float | None = None) -> LinearModel:
        """The servable model with calibration ``method`` and its threshold for ``target_recall``."""
        target = self.target_recall if target_recall is None else target_recall
        threshold = choose_threshold(self.y, self.oof_proba[method], target)
        return LinearModel.from_pipeline(self.pipeline, self.calibrations[method], threshold)


def _calibrations(decision: np.ndarray, y: np.ndarray) -> dict[str, Calibration]:
    """Every calibration, fitted on out-of-fold decision values exactly as CalibratedClassifierCV does."""
    sigmoid = _SigmoidCalibration().fit(decision, y)
    isotonic = IsotonicRegression(out_of_bounds="clip").fit(decision, y)
    return {
        "none": Calibration.none(),
        "sigmoid": Calibration.sigmoid(float(sigmoid.a_), float(sigmoid.b_)),
        "isotonic": Calibration.isotonic(isotonic.X_thresholds_, isotonic.y_thresholds_),
    }


def fit_procedure(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, seed: int, target_recall: float
) -> Fitted:
    """Run the training procedure on these rows (see the module docstring)."""
    folds = grouped_folds(y, groups, INNER_FOLDS, seed)
    decision = cross_val_predict(build_pipeline(seed), X, y, cv=folds, method="decision_function")
    pipeline = build_pipeline(seed).fit(X, y)
    calibrations = _calibrations(decision, y)
    oof = {name: cal.apply(decision) for name, cal in calibrations.items()}
    return Fitted(pipeline, folds, decision, y, calibrations, oof, target_recall)


def download_artifact(fitted: Fitted, X: np.ndarray, y: np.ndarray, method: str, seed: int) -> Any:
    """The scikit-learn object people download (model.joblib): the pipeline, or CalibratedClassifierCV over
    it fitted with the same folds (so it computes the very same out-of-fold values and calibrator)."""
    if method == "none":
        return fitted.pipeline
    return CalibratedClassifierCV(build_pipeline(seed), method=method, cv=fitted.folds, ensemble=False).fit(
        X, y
    )


# -- nested cross-validation -------------------------------------------------------------------------
@dataclass
class OuterFold:
    """One outer fold: the rows scored, and the procedure fitted on the other rows."""

    repeat: int
    fold: int
    test_index: np.ndarray
    fitted: Fitted
    X_test: np.ndarray

    def predictions(self, method: str, target_recall: float | None = None) -> tuple[np.ndarray, float]:
        model = self.fitted.model(method, target_recall)
        return model.proba(self.X_test), model.threshold


@dataclass
class NestedCV:
    """Every outer fold of every repeat, over ``y``/``groups`` (the rows the estimate rests on)."""

    y: np.ndarray
    groups: np.ndarray
    repeats: int
    folds: list[OuterFold] = field(default_factory=list)
    duration_seconds: float = 0.0

    def pooled(self, method: str, target_recall: float | None = None) -> pd.DataFrame:
        """One row per (outer fold, test row): row index, repeat, fold, probability, threshold, prediction."""
        parts = []
        for outer in self.folds:
            proba, threshold = outer.predictions(method, target_recall)
            parts.append(
                pd.DataFrame(
                    {
                        "row": outer.test_index,
                        "repeat": outer.repeat,
                        "fold": outer.fold,
                        "proba": proba,
                        "threshold": threshold,
                        "pred": (proba >= threshold).astype(int),
                        "y": self.y[outer.test_index],
                        "group": self.groups[outer.test_index],
                    }
                )
            )
        return pd.concat(parts, ignore_index=True)


def nested_cv(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int,
    target_recall: float,
    repeats: int,
    folds: int,
) -> NestedCV:
    """Repeated, patient-grouped, stratified outer folds, the whole procedure fitted inside each.

    Each repeat draws its own outer folds (seeded from ``seed`` and the repeat number), so every row is
    scored once per repeat by a procedure that never saw its patient.
    """
    started = time.monotonic()
    result = NestedCV(y, groups, repeats)
    for repeat in range(repeats):
        for k, (fit_idx, test_idx) in enumerate(grouped_folds(y, groups, folds, seed * 7919 + repeat)):
            fitted = fit_procedure(
                X[fit_idx], y[fit_idx], groups[fit_idx], seed=seed, target_recall=target_recall
            )
            result.folds.append(OuterFold(repeat, k, test_idx, fitted, X[test_idx]))
    result.duration_seconds = time.monotonic() - started
    log.info(
        "nested CV: %d repeats x %d outer folds over %d rows in %.2fs",
        repeats,
        len(result.folds) // max(1, repeats),
        len(y),
        result.duration_seconds,
    )
    return result
