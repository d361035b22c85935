"""The pipeline steps over HTTP in-process (app/routes/pipeline.py): train, evaluate, upload, promote."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from etl.features import FEATURE_COLUMNS
from etl.registry import VERSION_RE
from tests.app.conftest import AUTH, BENIGN, MALIGNANT, Served, client_for, sample, service_settings
from tests.conftest import BUNDLED_SHA256, free_port, static_server
from tests.pipeline_support import QUICK_NESTED, synthetic_rows, write_csv
from tests.registry_support import metrics_of, report_path


def test_ready_503_then_200_after_train_and_evaluate(tmp_path: Path):
    with client_for(service_settings(tmp_path / "empty", **QUICK_NESTED)) as c:  # its figures do not matter
        assert c.get("/ready").status_code == 503
        assert c.post("/predict", json=BENIGN).status_code == 503

        trained = c.post("/train", headers=AUTH)
        assert trained.status_code == 200, trained.text
        version = trained.json()["version"]
        assert c.get("/ready").status_code == 503  # trained is not served

        evaluated = c.post("/evaluate", headers=AUTH, json={})
        assert evaluated.status_code == 200, evaluated.text
        assert evaluated.json()["promoted"] is True and evaluated.json()["served_version"] == version

        r = c.get("/ready")
        assert r.status_code == 200 and r.json() == {"status": "ready", "model_version": version}
        p = c.post("/predict", json=MALIGNANT)
        assert p.status_code == 200 and p.json()["model_version"] == version


def test_train_returns_version_rows_and_sha(served: Served):
    with client_for(served.settings(**QUICK_NESTED)) as client:  # the figures' shape, not their values
        r = client.post("/train", headers=AUTH, json={"force": True})
        assert r.status_code == 200, r.text
        out = r.json()
        assert (
            VERSION_RE.fullmatch(out["version"])
            and out["version"] > served.version
            and out["unchanged"] is False
        )
        assert out["data_sha256"] == BUNDLED_SHA256 and out["data_source"] == "BreastCancer.csv (bundled)"
        rows = out["rows"]
        assert (rows["raw"], rows["missing_dropped"], rows["duplicates_dropped"]) == (699, 16, 8)
        assert rows["train"] + rows["test"] + rows["reference_excluded"] == rows["clean"] == 675
        assert rows["reference_excluded"] == 136
        assert 0.0 < out["threshold"] < 1.0 and out["duration_seconds"] > 0
        nested = out["nested"]
        assert nested["metrics"]["recall"]["mean"] > 0.9 and nested["rows"] == 675 - 136
        lo, hi = nested["metrics"]["recall"]["ci95"]
        assert lo <= nested["metrics"]["recall"]["mean"] <= hi
        assert nested["counts"]["missed_cancers"]["of"] + nested["counts"]["false_alarms"]["of"] == 675 - 136
        assert out["calibration"] in {"isotonic", "sigmoid", "none"}
        assert served.registry.versions() == [served.version, out["version"]]
        assert served.registry.served_version() == served.version  # training alone never serves
        assert client.get("/ready").json()["model_version"] == served.version


def test_train_twice_with_identical_data_and_settings_yields_one_version(client: TestClient, served: Served):
    first = client.post("/train", headers=AUTH)
    second = client.post("/train", headers=AUTH, json={"data_url": None})
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["unchanged"] is second.json()["unchanged"] is True
    assert first.json()["version"] == second.json()["version"] == served.version
    assert first.json()["nested"] == second.json()["nested"]
    assert served.registry.versions() == [served.version]
    with client_for(served.settings(random_seed=1, **QUICK_NESTED)) as reseeded:  # settings differ
        changed = reseeded.post("/train", headers=AUTH)
    assert changed.status_code == 200 and changed.json()["unchanged"] is False
    assert served.registry.versions() == [served.version, changed.json()["version"]]


def test_train_while_another_training_runs_409(client: TestClient, served: Served):
    with served.registry.training_lock():
        r = client.post("/train", headers=AUTH)
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert detail.startswith("a training is already running (pid ") and detail.endswith(
        "; wait for it to finish and try again"
    )
    assert served.registry.versions() == [served.version]


def _bad_data(tmp: Path, kind: str) -> Path:
    rows = [list(r) for r in synthetic_rows(8)]
    if kind == "missing-column":
        return write_csv(tmp / "d.csv", [r[:-1] for r in rows], header=["Id", *FEATURE_COLUMNS])
    if kind == "out-of-range":
        rows[3][1] = 11
        return write_csv(tmp / "d.csv", rows)
    if kind == "infinite":
        rows[2][5] = "inf"
        return write_csv(tmp / "d.csv", rows)
    if kind == "single-class":
        return write_csv(tmp / "d.csv", [r for r in rows if r[-1] == 0])
    path = tmp / "page.csv"
    path.write_text("<!DOCTYPE html><html><body>login</body></html>")
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing-column", "missing column(s) ['Class']"),
        (
            "out-of-range",
            "column 'Cl.thickness' must be an integer from 1 to 10: 1 value(s) out of range at line(s) 5",
        ),
        ("single-class", "column 'Class' has a single class (0)"),
        ("infinite", "column 'Epith.c.size' has 1 non-finite or too large value(s) at line(s) 4"),
        ("html", "returned an HTML page, not a CSV"),
    ],
)
def test_train_bad_data_422(client: TestClient, served: Served, tmp_path: Path, kind: str, expected: str):
    (served.base / "data").mkdir(exist_ok=True)
    path = _bad_data(served.base / "data", kind)  # local overrides must live under DATA_DIR
    r = client.post("/train", headers=AUTH, json={"data_url": str(path)})
    assert r.status_code == 422
    assert expected in r.json()["detail"]
    assert served.registry.versions() == [served.version]


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/hostname", "data/../../outside.csv"])
def test_train_local_path_outside_data_dir_422(client: TestClient, served: Served, path: str):
    r = client.post("/train", headers=AUTH, json={"data_url": path})
    assert r.status_code == 422
    assert "outside DATA_DIR" in r.json()["detail"]
    assert served.registry.versions() == [served.version]


LOOPBACK_ALLOWED = {"data_url_allowed_hosts": ["127.0.0.1"], "data_url_allow_private_networks": True}


def test_train_unreachable_source_502(served: Served):
    url = f"http://127.0.0.1:{free_port()}/BreastCancer.csv"
    with client_for(served.settings(**LOOPBACK_ALLOWED)) as c:
        r = c.post("/train", headers=AUTH, json={"data_url": url})
    assert r.status_code == 502
    assert url in r.json()["detail"] and "DATA_URL" in r.json()["detail"]


def test_train_http_404_source_502(served: Served, tmp_path: Path):
    (tmp_path / "www").mkdir()
    with static_server(tmp_path / "www") as base, client_for(served.settings(**LOOPBACK_ALLOWED)) as c:
        r = c.post("/train", headers=AUTH, json={"data_url": f"{base}/none.csv"})
    assert r.status_code == 502
    assert "HTTP 404" in r.json()["detail"] and f"{base}/none.csv" in r.json()["detail"]


@pytest.mark.parametrize("body", [{"data_url": ""}, {"url": "x"}, {"data_url": 5}])
def test_train_bad_body_422(client: TestClient, body: dict[str, object]):
    r = client.post("/train", headers=AUTH, json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("20200101T000000Z-deadbeef", "model version 20200101T000000Z-deadbeef does not exist"),
        ("nope", "'nope' is not a model version"),
    ],
)
def test_evaluate_unknown_version_404(client: TestClient, version: str, expected: str):
    r = client.post("/evaluate", headers=AUTH, json={"version": version})
    assert r.status_code == 404
    assert r.json()["detail"].startswith(expected)


def test_evaluate_with_no_versions_404(empty_client: TestClient):
    r = empty_client.post("/evaluate", headers=AUTH)
    assert r.status_code == 404
    assert "no model has been trained yet" in r.json()["detail"]


def test_evaluate_served_version_without_promote(client: TestClient, served: Served):
    r = client.post("/evaluate", headers=AUTH, json={"version": served.version, "promote": False})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == served.version and out["promoted"] is False
    assert out["gate"]["passed"] is True and out["gate"]["reasons"] == []
    assert {c["name"] for c in out["gate"]["checks"]} == {
        "recall",
        "precision",
        "roc_auc",
        "reference_roc_auc",
        "reference_recall",
    }
    stored = metrics_of(served.base / "results", served.version)
    assert stored is not None
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "specificity", "confusion_matrix"):
        assert out["metrics"][key] == stored[key]
    assert out["metrics"]["quality_gate"] == out["gate"]


def test_evaluate_gate_failure_200_not_promoted_and_served_unchanged(served: Served):
    v2 = served.unevaluated_copy()  # the newest version: no training needed to judge one
    with client_for(served.settings(gate_min_recall=1.0)) as c:
        r = c.post("/evaluate", headers=AUTH, json={})

        assert r.status_code == 200, r.text
        out = r.json()
        assert out["version"] == v2
        assert out["gate"]["passed"] is False and out["promoted"] is False
        assert out["served_version"] == served.version
        recall = next(ch for ch in out["gate"]["checks"] if ch["name"] == "recall")
        assert recall["limit"] == 1.0 and recall["passed"] is False and recall["value"] < 1.0
        assert any(reason.startswith("recall =") for reason in out["gate"]["reasons"])
        assert c.get("/models/current").json()["version"] == served.version
        assert c.post("/predict", json=BENIGN).json()["model_version"] == served.version
        assert served.registry.served_version() == served.version

        rejected = c.post(f"/models/{v2}/promote", headers=AUTH)
        assert rejected.status_code == 409
        assert f"version {v2} failed the quality gate" in rejected.json()["detail"]
        models = {m["version"]: m for m in c.get("/models").json()["models"]}
        assert models[v2]["status"] == "rejected" and models[v2]["servable"] is False
        metrics_text = c.get("/metrics").text
    assert sample(metrics_text, "bcd_quality_gate_failures_total") >= 1


def test_promote_rollback_swaps_served_model(served: Served):
    with client_for(served.settings(**QUICK_NESTED)) as client:  # v2's figures do not matter
        v1 = served.version
        v2 = client.post("/train", headers=AUTH, json={"force": True}).json()["version"]
        not_evaluated = client.post(f"/models/{v2}/promote", headers=AUTH)
        assert not_evaluated.status_code == 409
        assert (
            not_evaluated.json()["detail"]
            == f"version {v2} has not been evaluated: evaluate it before promoting"
        )

        ev = client.post("/evaluate", headers=AUTH, json={"version": v2})
        assert ev.status_code == 200 and ev.json()["promoted"] is True
        assert client.post("/predict", json=BENIGN).json()["model_version"] == v2

        r = client.post(f"/models/{v1}/promote", headers=AUTH)

        assert r.status_code == 200
        assert r.json() == {"version": v1, "previous_version": v2, "promoted": True, "epoch": 3}
        assert client.get("/models/current").json()["version"] == v1
        assert client.get("/ready").json()["model_version"] == v1
        assert client.post("/predict", json=BENIGN).json()["model_version"] == v1
        listed = client.get("/models").json()
        assert listed["served_version"] == v1
        assert [(m["version"], m["served"]) for m in listed["models"]] == [(v1, True), (v2, False)]
        results = served.base / "results"
        assert (results / "model.joblib").read_bytes() == (
            results / "models" / v1 / "model.joblib"
        ).read_bytes()


@pytest.mark.parametrize("version", ["20200101T000000Z-deadbeef", "not-a-version"])
def test_promote_unknown_version_404(client: TestClient, version: str):
    r = client.post(f"/models/{version}/promote", headers=AUTH)
    assert r.status_code == 404
    assert r.json()["detail"].startswith((f"model version {version} does not exist", f"{version!r} is not a"))


def test_promote_tampered_model_409_and_keeps_serving(client: TestClient, served: Served):
    model = served.base / "results" / "models" / served.version / "model.joblib"
    model.write_bytes(model.read_bytes()[:-1])
    r = client.post(f"/models/{served.version}/promote", headers=AUTH)
    assert r.status_code == 409 and "fails its integrity check" in r.json()["detail"]
    assert client.post("/predict", json=BENIGN).status_code == 200


def test_upload_defaults_to_served_version(client: TestClient, served: Served):
    r = client.post("/upload", headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == served.version
    assert re.fullmatch(r"\d{8}_\d{6}", out["timestamp"])
    backup = Path(out["backup_dir"])
    assert backup == served.base / "upload" / out["timestamp"]
    uploaded = ["metrics.json", "model.joblib", "report.html"]
    assert sorted(p.name for p in backup.iterdir()) == uploaded
    results = served.base / "results"
    assert (backup / "model.joblib").read_bytes() == (
        results / "models" / served.version / "model.joblib"
    ).read_bytes()
    assert (backup / "report.html").read_bytes() == report_path(results, served.version).read_bytes()
    assert json.loads((backup / "metrics.json").read_text()) == metrics_of(results, served.version)
    assert (backup / "metrics.json").read_bytes() == (results / "metrics.json").read_bytes()  # the mirror
    assert sorted(f["name"] for f in out["files"]) == uploaded
    assert out["drive"]["status"] == "skipped" and out["drive"]["reason"]


def test_upload_unknown_version_404(client: TestClient):
    r = client.post("/upload", headers=AUTH, json={"version": "20200101T000000Z-deadbeef"})
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]


def test_upload_not_evaluated_version_409(client: TestClient, served: Served):
    copy = served.unevaluated_copy()
    r = client.post("/upload", headers=AUTH, json={"version": copy})
    assert r.status_code == 409 and "has not been evaluated" in r.json()["detail"]


def test_upload_without_served_model_503(empty_client: TestClient):
    r = empty_client.post("/upload", headers=AUTH)
    assert r.status_code == 503 and "no model is served yet" in r.json()["detail"]


@pytest.mark.parametrize(
    ("step", "method", "path", "body", "status"),
    [
        ("promote", "POST", "/models/19990101T000000Z-00000000/promote", None, 404),
        ("evaluate", "POST", "/evaluate", {"version": "19990101T000000Z-00000000"}, 404),
        ("upload", "POST", "/upload", {"version": "19990101T000000Z-00000000"}, 404),
    ],
)
def test_metrics_caller_error_counts_rejected_not_failure(
    client: TestClient, step: str, method: str, path: str, body: dict[str, Any] | None, status: int
):
    """A caller's 404 is not a broken pipeline: it must not count as a failure (UploadFailed reads those)."""

    def outcomes() -> dict[str, float]:
        text = client.get("/metrics").text
        return {
            o: sample(text, f'bcd_pipeline_steps_total{{outcome="{o}",step="{step}"}}')
            for o in ("success", "failure", "rejected")
        }

    def timed() -> float:
        return sample(
            client.get("/metrics").text, f'bcd_pipeline_step_duration_seconds_count{{step="{step}"}}'
        )

    before, timed_before = outcomes(), timed()
    r = client.request(method, path, json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert outcomes() == {**before, "rejected": before["rejected"] + 1}
    assert timed() == timed_before  # a refused request says nothing about how long the step takes
