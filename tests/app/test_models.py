"""GET /models, /models/current and the evaluation reports in-process (app/routes/models.py)."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from etl.report import FIGURES
from tests.app.conftest import Served
from tests.registry_support import report_path, report_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    assert model["report_url"] == f"/models/{served.version}/report"
    assert client.get(model["report_url"]).status_code == 200


def test_models_empty(empty_client: TestClient):
    r = empty_client.get("/models")
    assert r.status_code == 200 and r.json() == {"served_version": None, "epoch": 0, "models": []}


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


# --- the evaluation report --------------------------------------------------------------------------------
def test_models_report_url_only_for_a_version_with_a_report(client: TestClient, served: Served):
    copy = served.unevaluated_copy()
    models = {m["version"]: m for m in client.get("/models").json()["models"]}
    assert models[copy]["status"] == "trained" and models[copy]["report_url"] is None
    assert models[served.version]["report_url"] == f"/models/{served.version}/report"


def test_model_report_serves_the_html_with_a_strict_policy(client: TestClient, served: Served):
    r = client.get(f"/models/{served.version}/report")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.content == report_path(served.base / "results", served.version).read_bytes()
    assert f"<title>Evaluation report {served.version}</title>" in r.text
    assert "PASSED the quality gate" in r.text
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "img-src data:" in policy and "frame-ancestors 'none'" in policy
    assert "script-src" not in policy  # nothing may run
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", list(FIGURES))
def test_model_report_figure_is_served_as_png(client: TestClient, served: Served, name: str):
    r = client.get(f"/models/{served.version}/report/{name}.png")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG_MAGIC)
    record = report_record(served.base / "results", served.version)
    assert (
        record is not None and hashlib.sha256(r.content).hexdigest() == record["files"][f"report/{name}.png"]
    )


@pytest.mark.parametrize(
    "path",
    [
        "/models/20990101T000000Z-deadbeef/report",
        "/models/20990101T000000Z-deadbeef/report/roc.png",
        "/models/latest/report",
        "/models/..%2F..%2Fsecrets/report",
    ],
)
def test_model_report_unknown_version_404(client: TestClient, path: str):
    r = client.get(path)
    assert r.status_code == 404, r.text
    detail = r.json()["detail"]
    assert "does not exist" in detail or "is not a model version" in detail or detail == "Not Found"


def test_model_report_not_evaluated_404(client: TestClient, served: Served):
    copy = served.unevaluated_copy()
    for path in (f"/models/{copy}/report", f"/models/{copy}/report/roc.png"):
        r = client.get(path)
        assert r.status_code == 404, r.text
        assert (
            r.json()["detail"]
            == f"version {copy} has not been evaluated yet: its report is written at evaluation"
        )


@pytest.mark.parametrize("name", ["nope", "ROC", "meta", "report", "..", "%2e%2e", "roc.png", "roc%00"])
def test_model_report_unknown_figure_404_without_echo(client: TestClient, served: Served, name: str):
    r = client.get(f"/models/{served.version}/report/{name}.png")
    assert r.status_code == 404, r.text
    assert r.json() == {
        "detail": "no such figure: the report's figures are roc, pr, threshold, calibration, confusion"
    }


@pytest.mark.parametrize(
    "suffix",
    [
        "/report/..%2F..%2Fmeta.json",
        "/report/..%2Fmetrics.json.png",
        "/report/..%2F..%2F..%2Fcurrent.json.png",
        "/report/%2e%2e%2fmodel.json.png",
        "/report/roc.png/..%2F..%2F..%2Fmeta.json",
    ],
)
def test_model_report_path_traversal_refused(client: TestClient, served: Served, suffix: str):
    r = client.get(f"/models/{served.version}{suffix}")
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/json"
    assert b"model_signature" not in r.content and b"quality_gate" not in r.content


def test_model_report_figure_name_too_long_422(client: TestClient, served: Served):
    r = client.get(f"/models/{served.version}/report/{'x' * 100}.png")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "name"]


def test_model_report_changed_after_writing_409(client: TestClient, served: Served):
    path = report_path(served.base / "results", served.version)  # the store's object, changed behind its back
    path.write_text(path.read_text().replace("PASSED", "PASSED!"))
    r = client.get(f"/models/{served.version}/report")
    assert r.status_code == 409
    assert (
        "report.html of version" in r.json()["detail"] and "fails its integrity check" in r.json()["detail"]
    )


def test_openapi_describes_the_report_routes(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    html = paths["/models/{version}/report"]["get"]
    assert "text/html" in html["responses"]["200"]["content"]
    assert "metrics.json" in html["description"] and html["summary"] == "A version's evaluation report"
    png = paths["/models/{version}/report/{name}.png"]["get"]
    assert "image/png" in png["responses"]["200"]["content"]
    (name,) = [p for p in png["parameters"] if p["name"] == "name"]
    assert all(figure in name["description"] for figure in FIGURES)
    listing = json.dumps(client.get("/openapi.json").json()["components"]["schemas"]["ModelSummary"])
    assert "report_url" in listing
