"""The three ASGI middlewares (app/middleware.py) through the whole stack in-process."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.middleware import content_length, is_json
from etl.features import FEATURE_COLUMNS
from tests.app.conftest import BENIGN, Served, client_for, named, sample, without_ids

JSON = {"Content-Type": "application/json"}
ROUTE_JSON = {"Content-Type": "application/problem+json"}  # JSON for FastAPI, not for the fast path
BAD_VALUES = [0, 11, -1, 10**30, 5.0, 5.5, "5", True, None, [5], {"v": 5}]


# --- the header helpers all three share ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"content-length", b"0")], 0),
        ([(b"host", b"x"), (b"content-length", b"1234")], 1234),
        ([(b"content-length", b"7"), (b"content-length", b"9")], 7),
        ([(b"content-length", b"")], -1),
        ([(b"content-length", b"-5")], -1),
        ([(b"content-length", b"1e3")], -1),
        ([(b"content-length", b" 12")], -1),
        ([(b"content-length", b"\xd9\xa3")], -1),  # a non-ASCII digit
    ],
    ids=["absent", "zero", "among-others", "first-wins", "empty", "negative", "exponent", "space", "arabic"],
)
def test_content_length_parses_plain_decimal_only(headers: list[tuple[bytes, bytes]], expected: int | None):
    assert content_length(headers) == expected


@pytest.mark.parametrize(
    ("value", "json_or_suffixed", "exactly_json"),
    [
        (None, False, False),
        (b"application/json", True, True),
        (b"Application/JSON; charset=utf-8", True, True),
        (b"application/problem+json", True, False),
        (b"text/json", False, False),
        (b"application/jsonx", False, False),
        (b"text/plain", False, False),
    ],
)
def test_is_json_media_types(value: bytes | None, json_or_suffixed: bool, exactly_json: bool):
    headers = [] if value is None else [(b"content-type", value)]
    assert is_json(headers) is json_or_suffixed
    assert is_json(headers, suffixed=False) is exactly_json


# --- PredictFastPath -----------------------------------------------------------------------------


def test_fast_path_answers_valid_requests_without_the_route(
    predict_client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    def route_called(*args: object) -> None:
        raise AssertionError("the FastAPI route answered a valid request")

    monkeypatch.setattr("app.routes.predict.predict_one", route_called)
    monkeypatch.setattr("app.routes.predict.predict_many", route_called)
    row = (5, 1, 1, 1, 2, 1, 3, 1, 1)
    assert predict_client.post("/predict", json=named(row)).status_code == 200
    assert predict_client.post("/predict", json=named(row, FEATURE_COLUMNS)).status_code == 200
    assert predict_client.post("/predict/batch", json={"instances": [named(row)] * 3}).status_code == 200
    batch = {"instances": [named(row, FEATURE_COLUMNS), named(row)]}
    assert predict_client.post("/predict/batch", json=batch).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", named((8, 10, 10, 8, 7, 10, 9, 7, 1))),
        ("/predict", named((1, 1, 1, 1, 1, 1, 1, 1, 1), FEATURE_COLUMNS)),
        ("/predict/batch", {"instances": [named((r % 10 + 1,) * 9) for r in range(25)]}),
    ],
)
def test_fast_path_response_equals_route_response(
    predict_client: TestClient, path: str, body: dict[str, Any]
):
    content = json.dumps(body).encode()
    fast = predict_client.post(path, content=content, headers=JSON)
    route = predict_client.post(path, content=content, headers=ROUTE_JSON)
    assert fast.status_code == route.status_code == 200
    assert fast.headers["content-type"] == route.headers["content-type"] == "application/json"
    assert without_ids(fast.json()) == without_ids(route.json())
    ids = [
        r.json().get("prediction_id") or [p["prediction_id"] for p in r.json()["predictions"]]
        for r in (fast, route)
    ]
    assert all(ids) and ids[0] != ids[1]  # both recorded, each under ids of its own
    # which version answered, in a header on both paths (the fast path's is encoded once per model)
    assert fast.headers["x-model-version"] == route.headers["x-model-version"] == fast.json()["model_version"]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_predict_bad_value_422_names_field_like_route(predict_client: TestClient, value: object):
    body = json.dumps({**BENIGN, "mitoses": value}).encode()
    r = predict_client.post("/predict", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [e["loc"] for e in detail] == [["body", "mitoses"]]
    assert set(detail[0]) == {"loc", "msg", "type"}
    route = predict_client.post("/predict", content=body, headers=ROUTE_JSON)
    assert (r.status_code, r.json()) == (route.status_code, route.json())


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b'{"instances": []}'])
def test_predict_unusable_body_422_like_route(predict_client: TestClient, content: bytes):
    fast = predict_client.post("/predict", content=content, headers=JSON)
    route = predict_client.post("/predict", content=content, headers=ROUTE_JSON)
    assert fast.status_code == 422, fast.text
    assert fast.json() == route.json()
    assert isinstance(fast.json()["detail"], list) and fast.json()["detail"]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_predict_batch_bad_value_422_names_index_and_field(predict_client: TestClient, value: object):
    instances: list[Any] = [dict(BENIGN) for _ in range(5)]
    instances[3]["bland_chromatin"] = value
    body = json.dumps({"instances": instances}).encode()
    r = predict_client.post("/predict/batch", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "instances", 3, "bland_chromatin"]]
    route = predict_client.post("/predict/batch", content=body, headers=ROUTE_JSON)
    assert r.json() == route.json()


@pytest.mark.parametrize(
    "body",
    [
        {"instances": []},
        {"instances": BENIGN},
        {"instances": [BENIGN, [5, 1, 1, 1, 2, 1, 3, 1, 1]]},
        {"instances": [BENIGN, {**BENIGN, "extra": 1}]},
        {"instances": [BENIGN], "more": 1},
        {"rows": [BENIGN]},
        [BENIGN],
    ],
    ids=["empty", "object", "list-instance", "extra-key", "extra-envelope", "wrong-envelope", "bare-list"],
)
def test_predict_batch_bad_envelope_422_like_route(predict_client: TestClient, body: Any):
    content = json.dumps(body).encode()
    fast = predict_client.post("/predict/batch", content=content, headers=JSON)
    route = predict_client.post("/predict/batch", content=content, headers=ROUTE_JSON)
    assert fast.status_code == 422, fast.text
    assert fast.json() == route.json()


# --- BodySizeLimit -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_max_body_bytes_413(served: Served, path: str, chunked: bool):
    small_body: dict[str, Any] = BENIGN if path == "/predict" else {"instances": [BENIGN]}
    # a valid body (JSON white space pads the single one) that is too large only by its size
    body = (
        (json.dumps(BENIGN) + " " * 2000).encode()
        if path == "/predict"
        else (json.dumps({"instances": [BENIGN] * 20}).encode())
    )
    assert len(body) > 1024
    counted = f'http_requests_total{{handler="{path}",method="POST",status="413"}}'
    with client_for(served.settings(max_body_bytes=1024)) as c:
        before = sample(c.get("/metrics").text, counted)
        small = c.post(path, json=small_body)
        content: Any = iter([body[:600], body[600:]]) if chunked else body
        r = c.post(path, content=content, headers=JSON)
        assert sample(c.get("/metrics").text, counted) == before + 1  # counted as what the client got
    assert small.status_code == 200, small.text
    assert ("content-length" in {k.lower() for k in r.request.headers}) is not chunked
    assert r.status_code == 413, r.text
    assert r.json() == {"detail": "request body is larger than MAX_BODY_BYTES=1024 bytes"}


# --- HttpMetrics ---------------------------------------------------------------------------------


def test_fast_path_requests_counted_by_route_template(predict_client: TestClient):
    ok = 'http_requests_total{handler="/predict",method="POST",status="200"}'
    bad = 'http_requests_total{handler="/predict/batch",method="POST",status="422"}'
    rows = "bcd_predict_batch_rows_count"
    before = predict_client.get("/metrics").text
    assert predict_client.post("/predict", json=BENIGN).status_code == 200
    assert predict_client.post("/predict/batch", json={"instances": []}).status_code == 422
    assert predict_client.post("/predict/batch", json={"instances": [BENIGN] * 40}).status_code == 200
    after = predict_client.get("/metrics").text
    assert sample(after, ok) == sample(before, ok) + 1
    assert sample(after, bad) == sample(before, bad) + 1
    assert sample(after, rows) == sample(before, rows) + 1
    assert 'http_request_duration_seconds_bucket{handler="/predict",le="0.0005",method="POST"}' in after
    assert 'http_requests_inprogress{handler="/predict",method="POST"} 0.0' in after


def test_fast_path_unexpected_error_500_json_and_counted(
    predict_client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """The fast path sits outside FastAPI's error layer (app/main.py): it answers a bug's 500 itself."""

    def broken(*args: object) -> None:
        raise RuntimeError("a bug, with secret-ish internals")

    key = 'http_requests_total{handler="/predict",method="POST",status="500"}'
    before = sample(predict_client.get("/metrics").text, key)
    monkeypatch.setattr("app.middleware.predict_one", broken)
    r = predict_client.post("/predict", json=BENIGN)
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error; see the service log"}
    assert "secret-ish" not in r.text
    assert "unhandled error on POST /predict" in caplog.text
    assert sample(predict_client.get("/metrics").text, key) == before + 1
    monkeypatch.undo()
    assert predict_client.post("/predict", json=BENIGN).status_code == 200


def test_route_unexpected_error_500_json_and_counted(served: Served, monkeypatch: pytest.MonkeyPatch):
    """Our middlewares wrap FastAPI's whole stack (app/main.py: ServiceApp): a bug in a route is still
    answered by FastAPI's error layer with the JSON 500, and counted as a 500."""

    def broken(*args: object) -> None:
        raise RuntimeError("a bug, with secret-ish internals")

    monkeypatch.setattr("app.routes.models.pipeline.list_models", broken)
    counted = 'http_requests_total{handler="/models",method="GET",status="500"}'
    with TestClient(create_app(served.settings()), raise_server_exceptions=False) as c:
        before = sample(c.get("/metrics").text, counted)
        r = c.get("/models")
        assert r.status_code == 500
        assert r.json() == {"detail": "internal server error; see the service log"}
        assert "secret-ish" not in r.text
        assert sample(c.get("/metrics").text, counted) == before + 1
        assert c.get("/health").status_code == 200
