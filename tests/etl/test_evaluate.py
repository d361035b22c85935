"""etl.evaluate: metrics on a hand-computed example, and the metrics.json dict of evaluate_model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from etl.evaluate import classification_metrics, evaluate_model, predict_proba
from etl.features import FEATURE_COLUMNS
from etl.train import build_pipeline
from etl.validate import load_prepared
from tests.pipeline_support import synthetic_rows, write_csv

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


def test_evaluate_model_returns_metrics_json_dict(tmp_path: Path):
    prepared = load_prepared(write_csv(tmp_path / "d.csv", synthetic_rows(10)))
    frame = prepared.frame
    pipeline = build_pipeline(0).fit(frame[list(FEATURE_COLUMNS)].to_numpy(dtype=float), frame["Class"])
    meta = {
        "version": "20250101T000000Z-0123abcd",
        "created_at": "2025-01-01T00:00:00+00:00",
        "cv": {"recall": {"mean": 0.9, "std": 0.1}},
        "rows": {"raw": 20},
        "data_sha256": "ab" * 32,
        "data_source": "/x.csv",
    }
    holdout = frame.iloc[::2]

    metrics = evaluate_model(pipeline, holdout, 0.5, meta)

    expected = classification_metrics(
        holdout["Class"].to_numpy(),
        pipeline.predict_proba(holdout[list(FEATURE_COLUMNS)].to_numpy(dtype=float))[:, 1],
        0.5,
    )
    for key, value in expected.items():
        assert metrics[key] == value
    assert metrics["threshold"] == 0.5
    assert metrics["model_version"] == meta["version"]
    assert metrics["trained_at"] == meta["created_at"]
    assert metrics["cv"] == meta["cv"] and metrics["rows"] == meta["rows"]
    assert metrics["data_sha256"] == meta["data_sha256"] and metrics["data_source"] == "/x.csv"
    assert set(metrics["versions"]) >= {"python", "scikit-learn", "pandas"}
    assert metrics["evaluated_at"]


def test_predict_proba_uses_feature_order_not_frame_order(tmp_path: Path):
    frame = load_prepared(write_csv(tmp_path / "d.csv", synthetic_rows(10))).frame
    pipeline = build_pipeline(0).fit(frame[list(FEATURE_COLUMNS)].to_numpy(dtype=float), frame["Class"])
    shuffled = frame[list(reversed(frame.columns))]
    np.testing.assert_array_equal(predict_proba(pipeline, shuffled), predict_proba(pipeline, frame))
