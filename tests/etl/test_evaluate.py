"""etl.evaluate: metrics on hand-computed examples, intervals, calibration error, the nested-CV summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from etl.evaluate import (
    classification_metrics,
    expected_calibration_error,
    summarise_nested,
    wilson_interval,
    with_intervals,
)

Y = np.array([0, 0, 1, 1, 1, 0])
P = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2])


def test_classification_metrics_hand_example():
    m = classification_metrics(Y, P, 0.5)
    # predicted [0, 1, 1, 0, 1, 0]: tp 2, fp 1, fn 1, tn 2
    assert m["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(8 / 9)  # 8 of 9 (positive, negative) pairs ranked right
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))
    assert m["support"] == {"benign": 3, "malignant": 3}


def test_classification_metrics_threshold_is_inclusive():
    m = classification_metrics(Y, P, 0.7)  # 0.7 itself counts as malignant
    assert m["confusion_matrix"] == {"tn": 3, "fp": 0, "fn": 1, "tp": 2}
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)


def test_classification_metrics_no_predicted_positive_gives_zero_not_error():
    m = classification_metrics(Y, P, 0.95)
    assert m["confusion_matrix"] == {"tn": 3, "fp": 0, "fn": 3, "tp": 0}
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == 0.5 and m["specificity"] == 1.0


def test_expected_calibration_error_hand_example():
    # bin [0.1, 0.2): mean p 0.15, observed 0.5 (n 2); bin [0.9, 1.0]: mean p 0.95, observed 1.0 (n 2)
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.2 - 1e-9, 0.9, 1.0])
    expected = 0.5 * abs(np.mean(p[:2]) - 0.5) + 0.5 * abs(np.mean(p[2:]) - 1.0)
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


@pytest.mark.parametrize(("k", "n"), [(47, 48), (0, 20), (20, 20), (5, 136), (3.3, 188)])
def test_wilson_interval_contains_the_estimate_and_is_narrower_than_clopper_pearson(k: float, n: int):
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    if float(k).is_integer():  # exact (Clopper-Pearson) bounds are conservative: Wilson lies inside them
        cp_lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
        cp_hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        assert cp_lo - 1e-9 <= lo and hi <= cp_hi + 1e-9


def test_wilson_interval_of_47_of_48_matches_the_issue():
    lo, hi = wilson_interval(47, 48)
    assert (round(lo, 3), round(hi, 3)) == (0.891, 0.996)


def test_with_intervals_uses_the_confusion_matrix_counts():
    m = classification_metrics(Y, P, 0.5)
    assert with_intervals(m)["recall"] == wilson_interval(2, 3)
    assert with_intervals(m)["specificity"] == wilson_interval(2, 3)


def _pooled(rng: np.random.Generator, repeats: int = 3, rows: int = 60) -> pd.DataFrame:
    y = (np.arange(rows) % 3 == 0).astype(int)
    parts = []
    for r in range(repeats):
        proba = np.clip(y * 0.7 + rng.normal(0.15, 0.15, rows), 0, 1)
        parts.append(
            pd.DataFrame(
                {
                    "row": np.arange(rows),
                    "repeat": r,
                    "fold": np.arange(rows) % 5,
                    "proba": proba,
                    "threshold": 0.5,
                    "pred": (proba >= 0.5).astype(int),
                    "y": y,
                    "group": np.arange(rows) // 2,  # two rows per patient
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_summarise_nested_mean_is_the_mean_of_per_repeat_pooled_figures():
    pooled = _pooled(np.random.default_rng(0))
    summary = summarise_nested(pooled, samples=200)
    per_repeat = [
        classification_metrics(g["y"].to_numpy(), g["proba"].to_numpy(), 0.5)
        for _, g in pooled.groupby("repeat")
    ]
    for name in ("recall", "precision", "roc_auc", "brier"):
        est = summary["metrics"][name]
        assert est["mean"] == pytest.approx(np.mean([m[name] for m in per_repeat]))
        assert est["ci95"][0] <= est["mean"] <= est["ci95"][1]
        assert est["std"] >= 0.0
    missed = ((pooled["pred"] == 0) & (pooled["y"] == 1)).sum() / 3
    counts = summary["counts"]["missed_cancers"]
    assert counts["mean"] == pytest.approx(missed) and counts["of"] == 20
    assert counts["wilson95"] == wilson_interval(missed, 20)
    assert (summary["rows"], summary["patients"], summary["repeats"], summary["folds"]) == (60, 30, 3, 5)


def test_summarise_nested_bootstrap_resamples_patients_not_rows():
    # every patient has one malignant row caught and one benign row: recall is 1 in every resample
    rows = 40
    pooled = pd.DataFrame(
        {
            "row": np.arange(rows),
            "repeat": 0,
            "fold": np.arange(rows) % 5,
            "proba": np.tile([0.9, 0.1], rows // 2),
            "threshold": 0.5,
            "pred": np.tile([1, 0], rows // 2),
            "y": np.tile([1, 0], rows // 2),
            "group": np.arange(rows) // 2,
        }
    )
    summary = summarise_nested(pooled, samples=100)
    assert summary["metrics"]["recall"]["ci95"] == [1.0, 1.0]
    assert summary["metrics"]["specificity"]["ci95"] == [1.0, 1.0]
