"""The HTTP API in-process (TestClient with the lifespan running): every route, status code and error body."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import ServiceSettings
from etl.features import FEATURE_COLUMNS, FEATURE_NAMES
from etl.pipeline import open_registry
from etl.registry import VERSION_RE, Registry
from tests.conftest import BUNDLED_SHA256, free_port, static_server
from tests.pipeline_support import (
    build_served_registry,
    copy_tree,
    instance,
    load_artifact,
    make_settings,
    read_bundled,
    synthetic_rows,
    write_csv,
)

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BENIGN = instance((5, 1, 1, 1, 2, 1, 3, 1, 1))  # Id 1000025, Class 0
MALIGNANT = instance((8, 10, 10, 8, 7, 10, 9, 7, 1))  # Id 1017122, Class 1


def _settings(base: Path, **overrides: object) -> ServiceSettings:
    defaults: dict[str, object] = {"api_token": TOKEN, "model_poll_seconds": 0, "download_retries": 0}
    settings = make_settings(base, settings_class=ServiceSettings, **{**defaults, **overrides})
    assert isinstance(settings, ServiceSettings)
    return settings


@contextlib.contextmanager
def client_for(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A results dir with one trained, evaluated and promoted version (copied per test)."""
    base = tmp_path_factory.mktemp("api-template")
    _, version = build_served_registry(base)
    return base, version


class Served:
    def __init__(self, base: Path, version: str) -> None:
        self.base = base
        self.version = version

    def settings(self, **overrides: object) -> ServiceSettings:
        return _settings(self.base, **overrides)

    @property
    def registry(self) -> Registry:
        return open_registry(self.settings())


@pytest.fixture
def served(template: tuple[Path, str], tmp_path: Path) -> Served:
    base, version = template
    return Served(copy_tree(base, tmp_path / "svc"), version)


@pytest.fixture
def client(served: Served) -> Iterator[TestClient]:
    with client_for(served.settings()) as c:
        yield c


@pytest.fixture
def empty_client(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(_settings(tmp_path / "empty")) as c:
        yield c


def _only_error(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and len(detail) == 1, detail
    return detail[0]


def _counter(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- probes -------------------------------------------------------------------------------------


def test_health_ok(empty_client: TestClient):
    r = empty_client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_ready_without_model_503(empty_client: TestClient):
    r = empty_client.get("/ready")
    assert r.status_code == 503
    assert "no model is served yet" in r.json()["detail"] and "POST /train" in r.json()["detail"]


def test_ready_with_served_model_200(client: TestClient, served: Served):
    r = client.get("/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready", "model_version": served.version}


def test_ready_503_then_200_after_train_and_evaluate(empty_client: TestClient):
    c = empty_client
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


# --- /predict -----------------------------------------------------------------------------------


def test_predict_snake_case_matches_stored_pipeline(client: TestClient, served: Served):
    pipeline, meta = load_artifact(served.base / "results", served.version)
    for body, label in ((BENIGN, "benign"), (MALIGNANT, "malignant")):
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        expected = pipeline.predict_proba(np.array([list(body.values())], dtype=float))[0, 1]
        assert set(out) == {"label", "class", "probability_malignant", "threshold", "model_version"}
        assert abs(out["probability_malignant"] - expected) <= 1e-9
        assert out["threshold"] == meta["threshold"]
        assert out["label"] == label and out["class"] == (label == "malignant")
        assert out["class"] == int(out["probability_malignant"] >= out["threshold"])
        assert out["model_version"] == served.version


def test_predict_csv_names_accepted(client: TestClient):
    csv_body = dict(zip(FEATURE_COLUMNS, MALIGNANT.values(), strict=True))
    r = client.post("/predict", json=csv_body)
    assert r.status_code == 200, r.text
    assert r.json() == client.post("/predict", json=MALIGNANT).json()
    assert r.json()["label"] == "malignant"


_BAD_FIELDS = [
    ("missing", "mitoses", None, "missing"),
    ("extra", "age", 50, "extra_forbidden"),
    ("string", "bare_nuclei", "5", "int_type"),
    ("float", "clump_thickness", 5.5, "int_type"),
    ("float-integral", "clump_thickness", 5.0, "int_type"),
    ("bool", "mitoses", True, "int_type"),
    ("null", "normal_nucleoli", None, "int_type"),
    ("list", "bland_chromatin", [5], "int_type"),
    ("zero", "cell_size_uniformity", 0, "greater_than_equal"),
    ("eleven", "cell_shape_uniformity", 11, "less_than_equal"),
    ("negative", "marginal_adhesion", -1, "greater_than_equal"),
]


def _bad_body(kind: str, field: str, value: object) -> dict[str, object]:
    body: dict[str, object] = dict(BENIGN)
    if kind == "missing":
        del body[field]
    else:
        body[field] = value
    return body


@pytest.mark.parametrize(("kind", "field", "value", "err_type"), _BAD_FIELDS, ids=[b[0] for b in _BAD_FIELDS])
def test_predict_bad_field_422_names_field(
    client: TestClient, kind: str, field: str, value: object, err_type: str
):
    err = _only_error(client.post("/predict", json=_bad_body(kind, field, value)))
    assert err["loc"] == ["body", field]
    assert err["type"] == err_type
    assert err["msg"]


def test_predict_csv_name_out_of_range_422_names_csv_field(client: TestClient):
    body = dict(zip(FEATURE_COLUMNS, BENIGN.values(), strict=True))
    body["Mitoses"] = 11
    err = _only_error(client.post("/predict", json=body))
    assert err["loc"] == ["body", "Mitoses"] and err["type"] == "less_than_equal"


def test_predict_same_field_under_both_names_422(client: TestClient):
    body = {**BENIGN, "Cl.thickness": 9}  # ambiguous: clump_thickness given twice
    err = _only_error(client.post("/predict", json=body))
    assert err["loc"] == ["body", "Cl.thickness"] and err["type"] == "extra_forbidden"


@pytest.mark.parametrize("content", [b"not json", b"[1, 2, 3]", b""], ids=["not-json", "json-array", "empty"])
def test_predict_unusable_body_422(client: TestClient, content: bytes):
    r = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list) and r.json()["detail"]


def test_predict_without_model_503_says_how_to_train(empty_client: TestClient):
    r = empty_client.post("/predict", json=BENIGN)
    assert r.status_code == 503
    assert r.json() == {
        "detail": "no model is served yet: train and evaluate one (POST /train, then POST /evaluate), "
        "or run `python -m etl run`"
    }


# --- /predict/batch -----------------------------------------------------------------------------


def test_predict_batch_preserves_order(client: TestClient, served: Served):
    rows = read_bundled().dropna().head(25)
    instances = [instance(r) for r in rows[list(FEATURE_COLUMNS)].astype(int).itertuples(index=False)]
    r = client.post("/predict/batch", json={"instances": instances})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == served.version
    assert len(out["predictions"]) == len(instances)
    for inst, pred in zip(instances, out["predictions"], strict=True):
        single = client.post("/predict", json=inst).json()
        assert abs(pred["probability_malignant"] - single["probability_malignant"]) <= 1e-12
        assert pred["class"] == single["class"] == int(pred["probability_malignant"] >= out["threshold"])
        assert pred["label"] == ("malignant" if pred["class"] else "benign")
    assert {p["label"] for p in out["predictions"]} == {"benign", "malignant"}


@pytest.mark.parametrize("index", [0, 2, 4])
@pytest.mark.parametrize(("kind", "field", "value", "err_type"), _BAD_FIELDS[:4] + _BAD_FIELDS[-2:])
def test_predict_batch_bad_instance_422_names_index_and_field(
    client: TestClient, index: int, kind: str, field: str, value: object, err_type: str
):
    instances: list[dict[str, object]] = [dict(BENIGN) for _ in range(5)]
    instances[index] = _bad_body(kind, field, value)
    err = _only_error(client.post("/predict/batch", json={"instances": instances}))
    assert err["loc"] == ["body", "instances", index, field]
    assert err["type"] == err_type


def test_predict_batch_over_max_batch_422(served: Served):
    with client_for(served.settings(max_batch=3)) as c:
        ok = c.post("/predict/batch", json={"instances": [BENIGN] * 3})
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 3
        err = _only_error(c.post("/predict/batch", json={"instances": [BENIGN] * 4}))
    assert err["loc"] == ["body", "instances"]
    assert "MAX_BATCH=3" in err["msg"] and "got 4" in err["msg"]


@pytest.mark.parametrize("body", [{"instances": []}, {}, {"instances": [BENIGN], "extra": 1}])
def test_predict_batch_bad_envelope_422(client: TestClient, body: dict[str, object]):
    r = client.post("/predict/batch", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:2] in (["body", "instances"], ["body", "extra"])


def test_predict_batch_without_model_503(empty_client: TestClient):
    r = empty_client.post("/predict/batch", json={"instances": [BENIGN]})
    assert r.status_code == 503 and "POST /train" in r.json()["detail"]


# --- auth ---------------------------------------------------------------------------------------

_PROTECTED = [
    ("/train", {}),
    ("/evaluate", {}),
    ("/upload", {}),
    ("/models/{version}/promote", None),
]


@pytest.mark.parametrize(("path", "body"), _PROTECTED, ids=[p for p, _ in _PROTECTED])
@pytest.mark.parametrize(
    ("headers", "detail", "challenge"),
    [
        ({}, "missing bearer token: send 'Authorization: Bearer <API_TOKEN>'", "Bearer"),
        ({"Authorization": "Bearer wrong-token-0123456789"}, "invalid bearer token", "Bearer"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token", "Bearer"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid bearer token", "Bearer"),
    ],
    ids=["none", "wrong", "basic", "longer"],
)
def test_protected_route_without_valid_token_401(
    client: TestClient,
    served: Served,
    path: str,
    body: object,
    headers: dict[str, str],
    detail: str,
    challenge: str,
):
    versions_before = served.registry.versions()
    r = client.post(path.format(version=served.version), json=body, headers=headers)
    assert r.status_code == 401
    assert r.json()["detail"].startswith(detail)
    assert r.headers["WWW-Authenticate"].startswith(challenge)
    assert TOKEN not in r.text
    assert served.registry.versions() == versions_before  # nothing ran
    assert not any((served.base / "upload").glob("*"))  # no backup was written


def test_protected_route_open_when_api_token_unset(served: Served):
    with client_for(served.settings(api_token="")) as c:
        r = c.post(f"/models/{served.version}/promote")
    assert r.status_code == 200
    assert r.json() == {"version": served.version, "previous_version": served.version, "promoted": True}


# --- /train -------------------------------------------------------------------------------------


def test_train_returns_version_rows_and_sha(client: TestClient, served: Served):
    r = client.post("/train", headers=AUTH, json={"force": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (
        VERSION_RE.fullmatch(out["version"]) and out["version"] > served.version and out["unchanged"] is False
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
    with client_for(served.settings(random_seed=1)) as reseeded:  # one training setting differs
        changed = reseeded.post("/train", headers=AUTH)
    assert changed.status_code == 200 and changed.json()["unchanged"] is False
    assert served.registry.versions() == [served.version, changed.json()["version"]]


def test_train_while_another_training_runs_409(client: TestClient, served: Served):
    with served.registry.training_lock():
        r = client.post("/train", headers=AUTH)
    assert r.status_code == 409
    assert r.json() == {"detail": "a training is already running; wait for it to finish and try again"}
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


# --- /evaluate ----------------------------------------------------------------------------------


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
    stored = json.loads((served.base / "results" / "models" / served.version / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "specificity", "confusion_matrix"):
        assert out["metrics"][key] == stored[key]
    assert out["metrics"]["quality_gate"] == out["gate"]


def test_evaluate_gate_failure_200_not_promoted_and_served_unchanged(served: Served):
    with client_for(served.settings(gate_min_recall=1.0)) as c:
        v2 = c.post("/train", headers=AUTH, json={"force": True}).json()["version"]

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
    assert _counter(metrics_text, "bcd_quality_gate_failures_total") >= 1


# --- /models ------------------------------------------------------------------------------------


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


def test_promote_rollback_swaps_served_model(client: TestClient, served: Served):
    v1 = served.version
    v2 = client.post("/train", headers=AUTH, json={"force": True}).json()["version"]
    not_evaluated = client.post(f"/models/{v2}/promote", headers=AUTH)
    assert not_evaluated.status_code == 409
    assert (
        not_evaluated.json()["detail"] == f"version {v2} has not been evaluated: evaluate it before promoting"
    )

    ev = client.post("/evaluate", headers=AUTH, json={"version": v2})
    assert ev.status_code == 200 and ev.json()["promoted"] is True
    assert client.post("/predict", json=BENIGN).json()["model_version"] == v2

    r = client.post(f"/models/{v1}/promote", headers=AUTH)

    assert r.status_code == 200
    assert r.json() == {"version": v1, "previous_version": v2, "promoted": True}
    assert client.get("/models/current").json()["version"] == v1
    assert client.get("/ready").json()["model_version"] == v1
    assert client.post("/predict", json=BENIGN).json()["model_version"] == v1
    listed = client.get("/models").json()
    assert listed["served_version"] == v1
    assert [(m["version"], m["served"]) for m in listed["models"]] == [(v1, True), (v2, False)]
    results = served.base / "results"
    assert (results / "model.joblib").read_bytes() == (results / "models" / v1 / "model.joblib").read_bytes()


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


def test_startup_refuses_tampered_served_model(served: Served):
    model = served.base / "results" / "models" / served.version / "model.json"
    model.write_bytes(model.read_bytes() + b" ")
    (served.base / "results" / "model.joblib").unlink()  # nothing to fall back on
    with client_for(served.settings()) as c:
        assert c.get("/ready").status_code == 503
        assert c.post("/predict", json=BENIGN).status_code == 503


def test_startup_recovers_leftovers_and_resyncs_mirror(served: Served):
    results = served.base / "results"
    staging = results / "models" / ".tmp-20990101T000000Z-00000000"
    staging.mkdir()
    (staging / "model.joblib").write_bytes(b"half")
    (results / "model.joblib").write_bytes(b"stale mirror")
    with client_for(served.settings()) as c:
        assert c.get("/ready").json() == {"status": "ready", "model_version": served.version}
        assert c.get("/models").json()["served_version"] == served.version
    assert not staging.exists()
    vdir = results / "models" / served.version
    assert (results / "model.joblib").read_bytes() == (vdir / "model.joblib").read_bytes()


# --- /upload ------------------------------------------------------------------------------------


def test_upload_defaults_to_served_version(client: TestClient, served: Served):
    r = client.post("/upload", headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == served.version
    assert re.fullmatch(r"\d{8}_\d{6}", out["timestamp"])
    backup = Path(out["backup_dir"])
    assert backup == served.base / "upload" / out["timestamp"]
    assert sorted(p.name for p in backup.iterdir()) == ["metrics.json", "model.joblib"]
    vdir = served.base / "results" / "models" / served.version
    for name in ("model.joblib", "metrics.json"):
        assert (backup / name).read_bytes() == (vdir / name).read_bytes()
    assert sorted(f["name"] for f in out["files"]) == ["metrics.json", "model.joblib"]
    assert out["drive"]["status"] == "skipped" and out["drive"]["reason"]


def test_upload_unknown_version_404(client: TestClient):
    r = client.post("/upload", headers=AUTH, json={"version": "20200101T000000Z-deadbeef"})
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]


def test_upload_not_evaluated_version_409(client: TestClient, served: Served):
    models = served.base / "results" / "models"
    copy = "20990101T000000Z-0000abcd"
    copy_tree(models / served.version, models / copy)
    (models / copy / "metrics.json").unlink()
    r = client.post("/upload", headers=AUTH, json={"version": copy})
    assert r.status_code == 409 and "has not been evaluated" in r.json()["detail"]


def test_upload_without_served_model_503(empty_client: TestClient):
    r = empty_client.post("/upload", headers=AUTH)
    assert r.status_code == 503 and "no model is served yet" in r.json()["detail"]


# --- body size ----------------------------------------------------------------------------------


def test_body_over_max_body_bytes_413(served: Served):
    padded = json.dumps(BENIGN) + " " * 2000
    with client_for(served.settings(max_body_bytes=1024)) as c:
        small = c.post("/predict", json=BENIGN)
        r = c.post("/predict", content=padded, headers={"content-type": "application/json"})

        def chunks() -> Iterator[bytes]:
            yield b'{"instances": ['
            for i in range(40):
                yield (b"," if i else b"") + json.dumps(BENIGN).encode()
            yield b"]}"

        streamed = c.post("/predict/batch", content=chunks(), headers={"content-type": "application/json"})
    assert small.status_code == 200
    assert r.status_code == 413
    assert r.json() == {"detail": "request body is larger than MAX_BODY_BYTES=1024 bytes"}
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    assert streamed.status_code == 413
    assert streamed.json()["detail"] == "request body is larger than MAX_BODY_BYTES=1024 bytes"


# --- docs and metrics ---------------------------------------------------------------------------

_ERRORS = {
    ("/predict", "post"): {"422", "503"},
    ("/predict/batch", "post"): {"422", "503"},
    ("/ready", "get"): {"503"},
    ("/train", "post"): {"401", "409", "422", "502"},
    ("/evaluate", "post"): {"401", "404", "409", "422"},
    ("/upload", "post"): {"401", "404", "409", "502"},
    ("/models/{version}/promote", "post"): {"401", "404", "409"},
    ("/models/current", "get"): {"503"},
    ("/models", "get"): set(),
    ("/health", "get"): set(),
}


def test_docs_page_served(empty_client: TestClient):
    r = empty_client.get("/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text.lower()


def test_openapi_documents_every_route(empty_client: TestClient):
    r = empty_client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert "Research use only" in spec["info"]["description"]
    assert "decision support" in spec["info"]["description"]
    operations = {(path, method): op for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert set(operations) == set(_ERRORS)
    for key, op in operations.items():
        assert op.get("summary"), key
        assert op.get("description"), key
        assert "200" in op["responses"], key
        assert _ERRORS[key] <= set(op["responses"]), (key, set(op["responses"]))
        for status in _ERRORS[key] - {"422"}:
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorResponse"), (key, status)
    for name in ("PredictRequest", "PredictResponse", "TrainResponse", "EvaluateResponse", "UploadResponse"):
        assert name in spec["components"]["schemas"]


def test_openapi_predict_examples_are_real_rows(empty_client: TestClient):
    schema = empty_client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    examples = schema["examples"]
    shared = read_bundled().dropna().astype(int)
    classes = []
    for example in examples:
        values = [example[name] for name in FEATURE_NAMES]
        match = shared[(shared[list(FEATURE_COLUMNS)] == values).all(axis=1)]
        assert len(match) >= 1, example
        classes.append(int(match["Class"].iloc[0]))
    assert sorted(classes) == [0, 1]  # one real benign row, one real malignant row


def test_metrics_exposes_bcd_metrics(client: TestClient, served: Served):
    before = client.get("/metrics").text
    benign_before = _counter(before, 'bcd_predictions_total{label="benign"}')
    assert client.post("/predict", json=BENIGN).json()["label"] == "benign"
    r = client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert _counter(text, 'bcd_predictions_total{label="benign"}') == benign_before + 1
    assert _counter(text, f'bcd_model_info{{version="{served.version}"}}') == 1.0
    threshold = served.registry.read_meta(served.version)["threshold"]
    assert _counter(text, "bcd_model_threshold_ratio") == pytest.approx(threshold)
    recall = served.registry.read_metrics(served.version)["recall"]
    assert _counter(text, 'bcd_model_quality_ratio{metric="recall"}') == pytest.approx(recall)
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
            o: _counter(text, f'bcd_pipeline_steps_total{{outcome="{o}",step="{step}"}}')
            for o in ("success", "failure", "rejected")
        }

    def timed() -> float:
        return _counter(
            client.get("/metrics").text, f'bcd_pipeline_step_duration_seconds_count{{step="{step}"}}'
        )

    before, timed_before = outcomes(), timed()
    r = client.request(method, path, json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert outcomes() == {**before, "rejected": before["rejected"] + 1}
    assert timed() == timed_before  # a refused request says nothing about how long the step takes
