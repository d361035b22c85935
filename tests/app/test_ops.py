"""GET /health, /ready and /metrics in-process (app/routes/ops.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import BENIGN, MALIGNANT, Served, sample


def test_health_ok(empty_client: TestClient):
    r = empty_client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "model_version": None}
    assert "x-model-version" not in r.headers


def test_health_and_ready_name_the_served_version(client: TestClient, served: Served):
    for path in ("/health", "/ready", "/models/current"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["x-model-version"] == served.version, path
    assert client.get("/health").json() == {"status": "ok", "model_version": served.version}


def test_ready_without_model_503(empty_client: TestClient):
    r = empty_client.get("/ready")
    assert r.status_code == 503
    assert "no model is served yet" in r.json()["detail"] and "POST /train" in r.json()["detail"]


def test_ready_with_served_model_200(client: TestClient, served: Served):
    r = client.get("/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready", "model_version": served.version}


def test_metrics_exposes_bcd_metrics(client: TestClient, served: Served):
    before = client.get("/metrics").text
    benign_before = sample(before, 'bcd_predictions_total{label="benign"}')
    malignant_before = sample(before, 'bcd_predictions_total{label="malignant"}')
    assert client.post("/predict", json=BENIGN).json()["label"] == "benign"
    assert client.post("/predict", json=MALIGNANT).json()["label"] == "malignant"
    r = client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert sample(text, 'bcd_predictions_total{label="benign"}') == benign_before + 1
    assert sample(text, 'bcd_predictions_total{label="malignant"}') == malignant_before + 1
    count = "bcd_prediction_probability_count"
    assert sample(text, count) == sample(before, count) + 2
    low = 'bcd_prediction_probability_bucket{le="0.05"}'
    assert sample(text, low) == sample(before, low) + 1  # the benign one, near 0; the malignant one above
    assert sample(text, f'bcd_model_info{{version="{served.version}"}}') == 1.0
    threshold = served.registry.read_meta(served.version)["threshold"]
    assert sample(text, "bcd_model_threshold_ratio") == pytest.approx(threshold)
    recall = served.registry.read_metrics(served.version)["recall"]
    assert sample(text, 'bcd_model_quality_ratio{metric="recall"}') == pytest.approx(recall)
    for name in (
        "bcd_prediction_probability_bucket",
        "bcd_predict_batch_rows_bucket",
        "bcd_pipeline_step_duration_seconds_bucket",
        'bcd_pipeline_steps_total{outcome="failure",step="train"}',
        "bcd_quality_gate_failures_total",
        "bcd_drive_upload_retries_total",
        "bcd_drive_upload_failures_total",
        "bcd_last_training_success_timestamp_seconds",
        "bcd_last_promotion_timestamp_seconds",
        'http_requests_total{handler="/predict",method="POST",status="200"}',
    ):
        assert name in text, name
