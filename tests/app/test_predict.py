"""POST /predict and /predict/batch in-process (app/routes/predict.py): answers, 422 naming the field, 503."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from etl.features import FEATURE_COLUMNS, FEATURE_NAMES
from tests.app.conftest import BENIGN, MALIGNANT, Served, client_for, named, only_error, without_ids
from tests.pipeline_support import instance, load_artifact, read_bundled


def test_predict_snake_case_matches_stored_pipeline(client: TestClient, served: Served):
    pipeline, meta = load_artifact(served.base / "results", served.version)
    for body, label in ((BENIGN, "benign"), (MALIGNANT, "malignant")):
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        expected = pipeline.predict_proba(np.array([list(body.values())], dtype=float))[0, 1]
        assert set(out) == {
            "prediction_id",
            "label",
            "class",
            "probability_malignant",
            "threshold",
            "model_version",
        }
        assert abs(out["probability_malignant"] - expected) <= 1e-9
        assert out["threshold"] == meta["threshold"]
        assert out["label"] == label and out["class"] == (label == "malignant")
        assert out["class"] == int(out["probability_malignant"] >= out["threshold"])
        assert out["model_version"] == served.version


def test_predict_csv_names_accepted(client: TestClient):
    csv_body = dict(zip(FEATURE_COLUMNS, MALIGNANT.values(), strict=True))
    r = client.post("/predict", json=csv_body)
    assert r.status_code == 200, r.text
    assert without_ids(r.json()) == without_ids(client.post("/predict", json=MALIGNANT).json())
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
    err = only_error(client.post("/predict", json=_bad_body(kind, field, value)))
    assert err["loc"] == ["body", field]
    assert err["type"] == err_type
    assert err["msg"]


def test_predict_csv_name_out_of_range_422_names_csv_field(client: TestClient):
    body = dict(zip(FEATURE_COLUMNS, BENIGN.values(), strict=True))
    body["Mitoses"] = 11
    err = only_error(client.post("/predict", json=body))
    assert err["loc"] == ["body", "Mitoses"] and err["type"] == "less_than_equal"


def test_predict_same_field_under_both_names_422(client: TestClient):
    body = {**BENIGN, "Cl.thickness": 9}  # ambiguous: clump_thickness given twice
    err = only_error(client.post("/predict", json=body))
    assert err["loc"] == ["body", "Cl.thickness"] and err["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({k: v for k, v in BENIGN.items() if k != "bare_nuclei"}, ["body", "bare_nuclei"]),
        ({**BENIGN, "colour": 3}, ["body", "colour"]),
    ],
    ids=["missing", "extra"],
)
def test_predict_missing_or_extra_field_422_names_it(
    client: TestClient, body: dict[str, Any], loc: list[Any]
):
    r = client.post("/predict", json=body)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]]


@pytest.mark.parametrize("content", [b"not json", b"[1, 2, 3]", b""], ids=["not-json", "json-array", "empty"])
def test_predict_unusable_body_422(client: TestClient, content: bytes):
    r = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list) and r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"), [("/predict", BENIGN), ("/predict/batch", {"instances": [BENIGN]})]
)
def test_predict_without_model_503_says_how_to_train(empty_client: TestClient, path: str, body: object):
    r = empty_client.post(path, json=body)
    assert r.status_code == 503, r.text
    assert r.json() == {
        "detail": "no model is served yet: train and evaluate one (POST /train, then POST /evaluate), "
        "or run `python -m etl run`"
    }


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
    err = only_error(client.post("/predict/batch", json={"instances": instances}))
    assert err["loc"] == ["body", "instances", index, field]
    assert err["type"] == err_type


@pytest.mark.parametrize("names", [FEATURE_NAMES, FEATURE_COLUMNS], ids=["snake-case", "csv-names"])
def test_predict_batch_over_max_batch_422(served: Served, names: tuple[str, ...]):
    """The limit holds on both ways through the fast path (plain rows, and the pydantic model)."""
    row = named(BENIGN.values(), names)
    with client_for(served.settings(max_batch=4)) as c:
        ok = c.post("/predict/batch", json={"instances": [row] * 4})
        r = c.post("/predict/batch", json={"instances": [row] * 5})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 4
    assert r.status_code == 422, r.text
    assert r.json() == {
        "detail": [
            {
                "loc": ["body", "instances"],
                "msg": "at most MAX_BATCH=4 instances per request, got 5",
                "type": "too_long",
            }
        ]
    }


@pytest.mark.parametrize("body", [{"instances": []}, {}, {"instances": [BENIGN], "extra": 1}])
def test_predict_batch_bad_envelope_422(client: TestClient, body: dict[str, object]):
    r = client.post("/predict/batch", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:2] in (["body", "instances"], ["body", "extra"])
