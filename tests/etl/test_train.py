"""etl.train: the threshold rule (property-tested), the procedure on training data only, the nested CV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

import etl.training
from etl.features import FEATURE_COLUMNS
from etl.pipeline import open_registry, train_version
from etl.scorer import check_parity, parity_rows
from etl.train import (
    CALIBRATION_METHODS,
    Fitted,
    arrays,
    build_pipeline,
    choose_threshold,
    download_artifact,
    fit_procedure,
    nested_cv,
)
from etl.validate import load_prepared, split_train_test
from tests.conftest import BUNDLED_CSV
from tests.pipeline_support import QUICK_NESTED, make_settings


def brute_force_threshold(y: np.ndarray, proba: np.ndarray, target: float) -> float:
    """Try every observed probability as a threshold; keep the highest whose recall reaches the target."""
    positives = int((y == 1).sum())
    best = None
    for t in sorted(set(proba.tolist())):
        caught = int(((proba >= t) & (y == 1)).sum())
        if Fraction(caught, positives) >= Fraction(target).limit_denominator(10_000):
            best = t
    assert best is not None
    return best


# probabilities from a small pool so that ties happen often
_proba = st.one_of(st.floats(0.0, 1.0, allow_nan=False), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 1), _proba), min_size=1, max_size=60).filter(
        lambda rows: any(y == 1 for y, _ in rows)
    ),
    target_pct=st.integers(1, 100),
)
def test_choose_threshold_matches_brute_force(data: list[tuple[int, float]], target_pct: int):
    y = np.array([r[0] for r in data])
    proba = np.array([r[1] for r in data])
    target = target_pct / 100

    chosen = choose_threshold(y, proba, target)

    assert chosen == brute_force_threshold(y, proba, target)
    recall = ((proba >= chosen) & (y == 1)).sum() / (y == 1).sum()
    assert recall >= target - 1e-12
    higher = proba[proba > chosen]  # any higher threshold misses the target
    if higher.size:
        next_up = higher.min()
        assert ((proba >= next_up) & (y == 1)).sum() / (y == 1).sum() < target - 1e-12


@pytest.mark.parametrize(
    ("target", "expected"),
    [(1.0, 0.2), (0.75, 0.6), (0.5, 0.8), (0.25, 0.9), (0.01, 0.9)],
)
def test_choose_threshold_hand_example(target: float, expected: float):
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    proba = np.array([0.9, 0.8, 0.6, 0.2, 0.95, 0.5, 0.1])
    assert choose_threshold(y, proba, target) == expected


def test_choose_threshold_no_positives_raises():
    with pytest.raises(ValueError, match="no positive rows"):
        choose_threshold(np.array([0, 0]), np.array([0.1, 0.9]), 0.98)


@pytest.fixture(scope="module")
def bundled_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    return split_train_test(load_prepared(BUNDLED_CSV).frame, test_size=0.2, seed=42)


@pytest.fixture(scope="module")
def fitted(bundled_split) -> tuple[Fitted, np.ndarray, np.ndarray]:
    train, _ = bundled_split
    X, y, groups = arrays(train)
    return fit_procedure(X, y, groups, seed=42, target_recall=0.98), X, y


def test_fit_procedure_threshold_comes_from_out_of_fold_training_probabilities(bundled_split, fitted):
    train, _ = bundled_split
    result, X, y = fitted
    # recompute the out-of-fold decision values independently on the training rows only
    oof = np.zeros(len(train))
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=42)
    for fit_idx, val_idx in splitter.split(X, y, train["Id"].to_numpy()):
        assert set(train["Id"].iloc[fit_idx]).isdisjoint(train["Id"].iloc[val_idx])
        oof[val_idx] = build_pipeline(42).fit(X[fit_idx], y[fit_idx]).decision_function(X[val_idx])
    np.testing.assert_allclose(result.oof_decision, oof, rtol=0, atol=1e-12)
    for method in CALIBRATION_METHODS:
        calibrated = result.calibrations[method].apply(oof)
        model = result.model(method)
        assert model.threshold == brute_force_threshold(y, calibrated, 0.98)
        assert ((calibrated >= model.threshold) & (y == 1)).sum() / (y == 1).sum() >= 0.98


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_fit_procedure_calibration_equals_calibrated_classifier_cv(fitted, method: str):
    result, X, y = fitted
    reference = CalibratedClassifierCV(build_pipeline(42), method=method, cv=result.folds, ensemble=False)
    reference.fit(X, y)
    rows = np.vstack([X, parity_rows(500)])
    np.testing.assert_allclose(
        result.model(method).proba(rows), reference.predict_proba(rows)[:, 1], rtol=0, atol=1e-12
    )
    assert check_parity(result.model(method), download_artifact(result, X, y, method, 42)) <= 1e-9


def test_fit_procedure_fits_scaler_and_logistic_regression_on_all_training_rows(bundled_split, fitted):
    train, _ = bundled_split
    result, _, _ = fitted
    scaler, clf = result.pipeline.named_steps.values()
    assert isinstance(scaler, StandardScaler) and isinstance(clf, LogisticRegression)
    assert scaler.n_samples_seen_ == len(train)
    np.testing.assert_allclose(scaler.mean_, train[list(FEATURE_COLUMNS)].mean().to_numpy())


def test_fit_procedure_same_seed_same_model(bundled_split):
    X, y, groups = arrays(bundled_split[0])
    a = fit_procedure(X, y, groups, seed=7, target_recall=0.98).model("isotonic")
    b = fit_procedure(X, y, groups, seed=7, target_recall=0.98).model("isotonic")
    assert a == b


def test_nested_cv_scores_each_row_once_per_repeat_with_a_procedure_that_never_saw_its_patient(bundled_split):
    train, _ = bundled_split
    X, y, groups = arrays(train)
    nested = nested_cv(X, y, groups, seed=3, target_recall=0.98, repeats=2, folds=4)
    assert len(nested.folds) == 8
    for repeat in range(2):
        tested = np.concatenate([f.test_index for f in nested.folds if f.repeat == repeat])
        assert sorted(tested.tolist()) == list(range(len(train)))
    for outer in nested.folds:
        fit_rows = np.setdiff1d(np.arange(len(train)), outer.test_index)
        assert set(groups[fit_rows]).isdisjoint(groups[outer.test_index])
        assert len(outer.fitted.y) == len(fit_rows)  # the whole procedure ran on the other rows only
    pooled = nested.pooled("none")
    assert len(pooled) == 2 * len(train)
    # every prediction uses its own fold's threshold, chosen inside that fold
    for (_, _), part in pooled.groupby(["repeat", "fold"]):
        assert part["threshold"].nunique() == 1
        assert ((part["proba"] >= part["threshold"]) == (part["pred"] == 1)).all()


def test_train_version_threshold_ignores_the_test_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real_split = etl.training.split_train_test

    def split_with_other_test_rows(frame: pd.DataFrame, **kwargs: object):
        train, test = real_split(frame, **kwargs)  # type: ignore[arg-type]
        other = test.iloc[: len(test) // 2].copy()
        other["Class"] = 1 - other["Class"]  # flipped labels, half the rows
        return train, other

    settings_a = make_settings(tmp_path / "a", **QUICK_NESTED)
    first = train_version(settings_a, open_registry(settings_a))
    monkeypatch.setattr(etl.training, "split_train_test", split_with_other_test_rows)
    settings_b = make_settings(tmp_path / "b", **QUICK_NESTED)
    second = train_version(settings_b, open_registry(settings_b))

    assert second.rows["test"] == first.rows["test"] // 2  # the patched split really was used
    assert second.threshold == first.threshold
