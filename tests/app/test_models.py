"""GET /models and /models/current in-process (app/routes/models.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.conftest import Served


def test_models_lists_served_version(client: TestClient, served: Served):
    r = client.get("/models")
    assert r.status_code == 200
    out = r.json()
    assert out["served_version"] == served.version
    (model,) = out["models"]
    assert model["version"] == served.version and model["status"] == "passed"
    assert model["servable"] is True and model["served"] is True and model["created_at"]
    assert set(model["metrics"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert model["metrics"]["recall"] >= 0.95


def test_models_empty(empty_client: TestClient):
    r = empty_client.get("/models")
    assert r.status_code == 200 and r.json() == {"served_version": None, "models": []}


def test_models_current(client: TestClient, served: Served):
    meta = served.registry.read_meta(served.version)
    r = client.get("/models/current")
    assert r.status_code == 200
    out = r.json()
    assert out["version"] == served.version and out["threshold"] == meta["threshold"]
    assert out["created_at"] == meta["created_at"]
    assert out["metrics"]["recall"] == served.registry.read_metrics(served.version)["recall"]


def test_models_current_without_model_503(empty_client: TestClient):
    r = empty_client.get("/models/current")
    assert r.status_code == 503 and "no model is served yet" in r.json()["detail"]
