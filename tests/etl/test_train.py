"""etl.train: the threshold rule (property-tested), and that it is chosen from training data only."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

import etl.pipeline
from etl.features import FEATURE_COLUMNS
from etl.pipeline import train_version
from etl.registry import Registry
from etl.train import build_pipeline, choose_threshold, train_model
from etl.validate import load_prepared, split_train_test
from tests.conftest import BUNDLED_CSV
from tests.pipeline_support import make_settings


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


def test_train_model_threshold_comes_from_out_of_fold_training_probabilities(bundled_split):
    train, _ = bundled_split
    result = train_model(train, seed=42, target_recall=0.98)

    # recompute the out-of-fold probabilities independently on the training rows only
    X = train[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
    y = train["Class"].to_numpy()
    oof = np.zeros(len(train))
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=42)
    for fit_idx, val_idx in splitter.split(X, y, train["Id"].to_numpy()):
        assert set(train["Id"].iloc[fit_idx]).isdisjoint(train["Id"].iloc[val_idx])
        oof[val_idx] = build_pipeline(42).fit(X[fit_idx], y[fit_idx]).predict_proba(X[val_idx])[:, 1]
    assert result.threshold == brute_force_threshold(y, oof, 0.98)
    assert ((oof >= result.threshold) & (y == 1)).sum() / (y == 1).sum() >= 0.98
    assert result.params["cv_folds"] == 5 and result.params["target_recall"] == 0.98
    assert set(result.cv) == {"accuracy", "precision", "recall", "f1", "specificity", "roc_auc"}
    assert all(0.0 <= v["mean"] <= 1.0 and v["std"] >= 0.0 for v in result.cv.values())


def test_train_model_fits_scaler_and_logistic_regression_on_all_training_rows(bundled_split):
    train, _ = bundled_split
    result = train_model(train, seed=42)
    scaler, clf = result.pipeline.named_steps.values()
    assert isinstance(scaler, StandardScaler) and isinstance(clf, LogisticRegression)
    assert scaler.n_samples_seen_ == len(train)
    np.testing.assert_allclose(scaler.mean_, train[list(FEATURE_COLUMNS)].mean().to_numpy())


def test_train_model_same_seed_same_model(bundled_split):
    train, _ = bundled_split
    a = train_model(train, seed=7)
    b = train_model(train, seed=7)
    assert a.threshold == b.threshold
    assert a.cv == b.cv
    np.testing.assert_array_equal(
        a.pipeline.named_steps["classifier"].coef_, b.pipeline.named_steps["classifier"].coef_
    )


def test_train_version_threshold_ignores_the_test_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real_split = etl.pipeline.split_train_test

    def split_with_other_test_rows(frame: pd.DataFrame, **kwargs: object):
        train, test = real_split(frame, **kwargs)  # type: ignore[arg-type]
        other = test.iloc[: len(test) // 2].copy()
        other["Class"] = 1 - other["Class"]  # flipped labels, half the rows
        return train, other

    first = train_version(make_settings(tmp_path / "a"), Registry(tmp_path / "a" / "results"))
    monkeypatch.setattr(etl.pipeline, "split_train_test", split_with_other_test_rows)
    second = train_version(make_settings(tmp_path / "b"), Registry(tmp_path / "b" / "results"))

    assert second.rows["test"] == first.rows["test"] // 2  # the patched split really was used
    assert second.threshold == first.threshold
    assert second.cv == first.cv
