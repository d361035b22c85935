"""etl/monitoring.py: feature distributions, the population stability index, live quality from outcomes;
and the distribution a training records in meta.json."""

from __future__ import annotations

import math

import numpy as np
import pytest

from etl.features import FEATURE_COLUMNS, FEATURE_NAMES
from etl.monitoring import (
    PSI_SIGNIFICANT,
    confusion,
    drift,
    feature_distribution,
    psi,
    quality,
    value_counts,
)
from tests.pipeline_support import bundled_complete_rows


def test_value_counts_scores_one_to_ten_only() -> None:
    assert value_counts([1, 1, 2, 10, 10, 10, 0, 11, 5]) == [2, 1, 0, 0, 1, 0, 0, 0, 0, 3]


def test_feature_distribution_counts_each_feature() -> None:
    X = np.array([[1] * 9, [2] * 9, [2, 3, 4, 5, 6, 7, 8, 9, 10]])
    dist = feature_distribution(X)
    assert dist["rows"] == 3 and dist["values"] == list(range(1, 11))
    assert dist["counts"]["clump_thickness"] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    assert dist["counts"]["mitoses"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="9 features"):
        feature_distribution(np.ones((3, 8)))


def test_psi_equal_distributions_zero_and_symmetric_terms() -> None:
    counts = [5, 10, 20, 40, 20, 10, 5, 3, 2, 1]
    assert psi(counts, counts) == 0.0
    assert psi(counts, [2 * c for c in counts]) == pytest.approx(0.0, abs=1e-3)  # only the smoothing differs
    shifted = list(reversed(counts))
    assert psi(counts, shifted) == pytest.approx(psi(shifted, counts))  # PSI is symmetric
    assert psi(counts, shifted) > PSI_SIGNIFICANT


def test_psi_matches_formula_on_smoothed_proportions() -> None:
    expected, actual = [10, 0, 30, 60, 0, 0, 0, 0, 0, 0], [20, 5, 25, 50, 0, 0, 0, 0, 0, 0]
    e = (np.array(expected) + 0.5) / (sum(expected) + 5)
    a = (np.array(actual) + 0.5) / (sum(actual) + 5)
    assert psi(expected, actual) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert math.isfinite(psi([100] + [0] * 9, [0] * 9 + [100]))  # no division by zero


def test_drift_resample_of_training_rows_below_threshold_skew_above() -> None:
    """Rows drawn from the data's own distribution stay far below 0.2; forcing two features to 10 moves
    exactly those two above it."""
    rows = bundled_complete_rows()[list(FEATURE_COLUMNS)].to_numpy()
    reference = feature_distribution(rows)
    rng = np.random.default_rng(7)
    sample = rows[rng.integers(0, len(rows), size=1000)]
    calm = drift(reference, sample)
    assert set(calm) == set(FEATURE_NAMES) and max(calm.values()) < 0.05, calm
    skewed = sample.copy()
    skewed[:, 0] = 10
    skewed[:, 8] = 10
    moved = drift(reference, skewed)
    assert {name for name, value in moved.items() if value > PSI_SIGNIFICANT} == {
        "clump_thickness",
        "mitoses",
    }


def test_confusion_and_quality_from_outcomes() -> None:
    predicted = [1, 1, 1, 0, 0, 0, 0, 1]
    actual = [1, 1, 0, 0, 0, 1, 0, 1]
    counts = confusion(predicted, actual)
    assert counts == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}
    assert quality(counts) == {"accuracy": 6 / 8, "recall": 3 / 4, "precision": 3 / 4, "specificity": 3 / 4}


def test_quality_without_denominator_none() -> None:
    assert quality(confusion([0, 0], [0, 0])) == {
        "accuracy": 1.0,
        "recall": None,
        "precision": None,
        "specificity": 1.0,
    }
    assert quality(confusion([], [])) == dict.fromkeys(("accuracy", "recall", "precision", "specificity"))
