"""Exactness of the /predict hot path: the served answers are the stored scikit-learn pipeline's.

Everything goes through the whole ASGI stack (body limit, HTTP metrics, the pure ASGI fast path, FastAPI),
in-process with the lifespan running: valid requests are answered by ``app.middleware.PredictFastPath``,
invalid ones are replayed to the FastAPI route. A body sent as ``application/problem+json`` is JSON to
FastAPI but not to the fast path, which gives the route's own answer to compare the fast path with.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from app import metrics
from app.main import create_app
from app.settings import ServiceSettings
from etl.features import FEATURE_COLUMNS, FEATURE_MAX, FEATURE_MIN, FEATURE_NAMES
from etl.pipeline import evaluate_version, open_registry, train_version
from etl.registry import Registry
from tests.conftest import BUNDLED_CSV
from tests.pipeline_support import load_artifact, make_settings

TOLERANCE = 1e-9
ROUTE_JSON = {"Content-Type": "application/problem+json"}  # JSON for FastAPI, not for the fast path


def _settings(base: Path, **overrides: Any) -> ServiceSettings:
    settings = make_settings(
        base, settings_class=ServiceSettings, **{"model_poll_seconds": 0, "api_token": "", **overrides}
    )
    assert isinstance(settings, ServiceSettings)
    return settings


@contextlib.contextmanager
def _client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One version trained on the bundled CSV, evaluated and promoted (the real pipeline)."""
    base = tmp_path_factory.mktemp("parity")
    s = _settings(base)
    registry = open_registry(s)
    version = train_version(s, registry).version
    assert evaluate_version(s, registry, version, promote=True).promoted
    return base


@pytest.fixture(scope="module")
def stored(model_dir: Path) -> tuple[Any, dict[str, Any], str]:
    version = Registry(model_dir / "results").served_version()
    assert version
    pipeline, meta = load_artifact(model_dir / "results", version)
    return pipeline, meta, version


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with _client(_settings(model_dir)) as c:
        yield c


@pytest.fixture(scope="module")
def csv_rows() -> list[tuple[int, ...]]:
    """Every row of the bundled CSV that is a valid request (rows with a missing "?" bare nuclei are not)."""
    frame = pd.read_csv(BUNDLED_CSV)
    features = frame[list(FEATURE_COLUMNS)].apply(pd.to_numeric, errors="coerce").dropna()
    return [tuple(int(v) for v in row) for row in features.itertuples(index=False)]


def _expected(pipeline: Any, rows: list[tuple[int, ...]]) -> np.ndarray:
    X = pd.DataFrame(np.array(rows, dtype=float), columns=list(FEATURE_COLUMNS))
    if not hasattr(pipeline, "feature_names_in_"):
        return pipeline.predict_proba(X.to_numpy())[:, 1]
    return pipeline.predict_proba(X)[:, 1]


def _body(row: tuple[int, ...], names: tuple[str, ...] = FEATURE_NAMES) -> dict[str, int]:
    return dict(zip(names, row, strict=True))


def _check_prediction(out: dict[str, Any], expected: float, threshold: float) -> None:
    p = out["probability_malignant"]
    assert abs(p - expected) <= TOLERANCE, (p, expected)
    assert out["class"] == (1 if p >= threshold else 0)
    assert out["label"] == ("malignant" if out["class"] else "benign")


# --- parity with predict_proba ------------------------------------------------------------------


def test_predict_every_csv_row_equals_predict_proba(client: TestClient, stored: Any, csv_rows: list[Any]):
    pipeline, meta, version = stored
    expected = _expected(pipeline, csv_rows)
    assert len(csv_rows) > 600
    for row, p in zip(csv_rows, expected, strict=True):
        r = client.post("/predict", json=_body(row))
        assert r.status_code == 200, r.text
        out = r.json()
        _check_prediction(out, float(p), meta["threshold"])
        assert out["threshold"] == meta["threshold"] and out["model_version"] == version


def test_predict_batch_every_csv_row_equals_predict_proba(
    client: TestClient, stored: Any, csv_rows: list[Any]
):
    pipeline, meta, version = stored
    r = client.post("/predict/batch", json={"instances": [_body(row) for row in csv_rows]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == version and out["threshold"] == meta["threshold"]
    assert len(out["predictions"]) == len(csv_rows)
    for prediction, p in zip(out["predictions"], _expected(pipeline, csv_rows), strict=True):
        assert set(prediction) == {"label", "class", "probability_malignant"}
        _check_prediction(prediction, float(p), meta["threshold"])


ROWS = st.tuples(*[st.integers(FEATURE_MIN, FEATURE_MAX)] * len(FEATURE_NAMES))
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(row=ROWS)
def test_predict_random_valid_row_equals_predict_proba(client: TestClient, stored: Any, row: tuple[int, ...]):
    pipeline, meta, _ = stored
    r = client.post("/predict", json=_body(row))
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), float(_expected(pipeline, [row])[0]), meta["threshold"])


@HYPOTHESIS
@given(
    rows=st.lists(ROWS, min_size=1, max_size=60), csv_names=st.lists(st.booleans(), min_size=60, max_size=60)
)
def test_predict_batch_random_valid_rows_equal_predict_proba(
    client: TestClient, stored: Any, rows: list[tuple[int, ...]], csv_names: list[bool]
):
    """Some instances use the CSV column names: the fast path then validates with the pydantic model."""
    pipeline, meta, _ = stored
    instances = [
        _body(row, FEATURE_COLUMNS if csv else FEATURE_NAMES)
        for row, csv in zip(rows, csv_names[: len(rows)], strict=True)
    ]
    r = client.post("/predict/batch", json={"instances": instances})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == len(rows)
    for prediction, p in zip(predictions, _expected(pipeline, rows), strict=True):
        _check_prediction(prediction, float(p), meta["threshold"])


# --- the fast path answers, and answers like the route ------------------------------------------


def test_fast_path_answers_valid_requests_without_the_route(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    def route_called(*args: object) -> None:
        raise AssertionError("the FastAPI route answered a valid request")

    monkeypatch.setattr("app.routes.predict.predict_one", route_called)
    monkeypatch.setattr("app.routes.predict.predict_many", route_called)
    row = (5, 1, 1, 1, 2, 1, 3, 1, 1)
    assert client.post("/predict", json=_body(row)).status_code == 200
    assert client.post("/predict", json=_body(row, FEATURE_COLUMNS)).status_code == 200
    assert client.post("/predict/batch", json={"instances": [_body(row)] * 3}).status_code == 200
    batch = {"instances": [_body(row, FEATURE_COLUMNS), _body(row)]}
    assert client.post("/predict/batch", json=batch).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", _body((8, 10, 10, 8, 7, 10, 9, 7, 1))),
        ("/predict", _body((1, 1, 1, 1, 1, 1, 1, 1, 1), FEATURE_COLUMNS)),
        ("/predict/batch", {"instances": [_body((r % 10 + 1,) * 9) for r in range(25)]}),
    ],
)
def test_fast_path_response_equals_route_response(client: TestClient, path: str, body: dict[str, Any]):
    content = json.dumps(body).encode()
    fast = client.post(path, content=content, headers={"Content-Type": "application/json"})
    route = client.post(path, content=content, headers=ROUTE_JSON)
    assert fast.status_code == route.status_code == 200
    assert fast.headers["content-type"] == route.headers["content-type"] == "application/json"
    assert fast.json() == route.json()


# --- errors: the documented ones, identical to the route's ---------------------------------------

GOOD = _body((5, 1, 1, 1, 2, 1, 3, 1, 1))
BAD_VALUES = [0, 11, -1, 10**30, 5.0, 5.5, "5", True, None, [5], {"v": 5}]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_predict_bad_value_422_names_field_like_route(client: TestClient, value: object):
    body = json.dumps({**GOOD, "mitoses": value}).encode()
    r = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [e["loc"] for e in detail] == [["body", "mitoses"]]
    assert set(detail[0]) == {"loc", "msg", "type"}
    route = client.post("/predict", content=body, headers=ROUTE_JSON)
    assert (r.status_code, r.json()) == (route.status_code, route.json())


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({k: v for k, v in GOOD.items() if k != "bare_nuclei"}, ["body", "bare_nuclei"]),
        ({**GOOD, "colour": 3}, ["body", "colour"]),
    ],
    ids=["missing", "extra"],
)
def test_predict_missing_or_extra_field_422_names_it(
    client: TestClient, body: dict[str, Any], loc: list[Any]
):
    r = client.post("/predict", json=body)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]]


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b'{"instances": []}'])
def test_predict_unusable_body_422_like_route(client: TestClient, content: bytes):
    fast = client.post("/predict", content=content, headers={"Content-Type": "application/json"})
    route = client.post("/predict", content=content, headers=ROUTE_JSON)
    assert fast.status_code == 422, fast.text
    assert fast.json() == route.json()
    assert isinstance(fast.json()["detail"], list) and fast.json()["detail"]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_predict_batch_bad_value_422_names_index_and_field(client: TestClient, value: object):
    instances: list[Any] = [dict(GOOD) for _ in range(5)]
    instances[3]["bland_chromatin"] = value
    body = json.dumps({"instances": instances}).encode()
    r = client.post("/predict/batch", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "instances", 3, "bland_chromatin"]]
    route = client.post("/predict/batch", content=body, headers=ROUTE_JSON)
    assert r.json() == route.json()


@pytest.mark.parametrize(
    "body",
    [
        {"instances": []},
        {"instances": GOOD},
        {"instances": [GOOD, [5, 1, 1, 1, 2, 1, 3, 1, 1]]},
        {"instances": [GOOD, {**GOOD, "extra": 1}]},
        {"instances": [GOOD], "more": 1},
        {"rows": [GOOD]},
        [GOOD],
    ],
    ids=["empty", "object", "list-instance", "extra-key", "extra-envelope", "wrong-envelope", "bare-list"],
)
def test_predict_batch_bad_envelope_422_like_route(client: TestClient, body: Any):
    content = json.dumps(body).encode()
    fast = client.post("/predict/batch", content=content, headers={"Content-Type": "application/json"})
    route = client.post("/predict/batch", content=content, headers=ROUTE_JSON)
    assert fast.status_code == 422, fast.text
    assert fast.json() == route.json()


def test_predict_batch_over_max_batch_422(model_dir: Path, tmp_path: Path):
    with _client(_settings(model_dir, max_batch=4)) as c:
        ok = c.post("/predict/batch", json={"instances": [GOOD] * 4})
        r = c.post("/predict/batch", json={"instances": [GOOD] * 5})
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


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_predict_without_model_503(tmp_path: Path, path: str):
    body = GOOD if path == "/predict" else {"instances": [GOOD]}
    with _client(_settings(tmp_path / "empty")) as c:
        r = c.post(path, json=body)
    assert r.status_code == 503, r.text
    assert r.json()["detail"].startswith("no model is served yet")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_predict_batch_over_body_limit_413(model_dir: Path, chunked: bool):
    body = json.dumps({"instances": [GOOD] * 20}).encode()
    assert len(body) > 1024
    with _client(_settings(model_dir, max_body_bytes=1024)) as c:
        content: Any = iter([body[:600], body[600:]]) if chunked else body
        r = c.post("/predict/batch", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json() == {"detail": "request body is larger than MAX_BODY_BYTES=1024 bytes"}


# --- metrics see fast-path requests like route requests -----------------------------------------


def _sample(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_fast_path_requests_counted_by_route_template(client: TestClient):
    ok = 'http_requests_total{handler="/predict",method="POST",status="200"}'
    bad = 'http_requests_total{handler="/predict/batch",method="POST",status="422"}'
    rows = "bcd_predict_batch_rows_count"
    before = client.get("/metrics").text
    assert client.post("/predict", json=GOOD).status_code == 200
    assert client.post("/predict/batch", json={"instances": []}).status_code == 422
    assert client.post("/predict/batch", json={"instances": [GOOD] * 40}).status_code == 200
    after = client.get("/metrics").text
    assert _sample(after, ok) == _sample(before, ok) + 1
    assert _sample(after, bad) == _sample(before, bad) + 1
    assert _sample(after, rows) == _sample(before, rows) + 1
    assert 'http_request_duration_seconds_bucket{handler="/predict",le="0.0005",method="POST"}' in after
    assert 'http_requests_inprogress{handler="/predict",method="POST"} 0.0' in after


def test_observe_many_equals_observe_one_by_one():
    values = np.random.default_rng(0).random(500)
    values[:5] = (0.05, 0.1, 1.0, 0.0, 0.35)  # exactly on bucket bounds
    buckets = tuple(i / 20 for i in range(1, 21))
    one_by_one = Histogram("p", "d", buckets=buckets, registry=CollectorRegistry())
    for v in values:
        one_by_one.observe(float(v))
    many = Histogram("p", "d", buckets=buckets, registry=CollectorRegistry())
    metrics.observe_many(many, values)

    def samples(h: Histogram) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in h.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    a, b = samples(one_by_one), samples(many)
    assert a.keys() == b.keys()
    for key in a:
        assert math.isclose(a[key], b[key], rel_tol=1e-12), key
