"""The API's own documentation in-process: every request example works, the docs pages load only the service's
own assets, those assets share one metrics label, and the documented 422 is the shape a real 422 has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.schemas import DataErrorResponse, ValidationErrorResponse
from etl.features import FEATURE_COLUMNS, FEATURE_NAMES
from tests.app.conftest import AUTH
from tests.pipeline_support import read_bundled


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    return schema


def _schema_examples(spec: dict[str, Any], schema: dict[str, Any]) -> list[Any]:
    schema = _resolve(spec, schema)
    found = list(schema.get("examples", []))
    if "example" in schema:
        found.append(schema["example"])
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found += _schema_examples(spec, sub)
    return found


def _request_examples(spec: dict[str, Any]) -> dict[tuple[str, str], list[Any]]:
    """Every example of every JSON request body: the media type's and its schema's, per operation."""
    found = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            media = op.get("requestBody", {}).get("content", {}).get("application/json")
            if media is None:
                continue
            examples = _schema_examples(spec, media.get("schema", {}))
            if "example" in media:
                examples.append(media["example"])
            examples += [e["value"] for e in media.get("examples", {}).values() if "value" in e]
            found[(method, path)] = examples
    return found


def test_openapi_request_examples_every_one_succeeds(client: TestClient):
    spec = client.get("/openapi.json").json()
    examples = _request_examples(spec)
    assert {("post", "/predict"), ("post", "/predict/batch"), ("post", "/train")} <= set(examples)
    sent = 0
    for (method, path), bodies in examples.items():
        assert bodies, f"{method.upper()} {path} documents a request body without an example"
        for body in bodies:
            r = client.request(method, path, json=body, headers=AUTH)
            # not just "not 422": a Swagger user who sends an example as it is gets an answer, offline
            assert r.status_code == 200, f"{method.upper()} {path} example {body!r}: {r.status_code} {r.text}"
            sent += 1
    assert sent >= 8, examples


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_local_assets(client: TestClient, page: str):
    r = client.get(page)
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "://" not in r.text, r.text  # no CDN, no web font, no favicon from another host
    urls = re.findall(r'(?:src|href|spec-url)="([^"]*)"', r.text) + re.findall(r"url: '([^']*)'", r.text)
    assert len(urls) >= 3, r.text  # script, favicon and the schema (and Swagger's stylesheet)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        assert asset.content, url


def test_docs_redoc_logo_and_oauth2_redirect_served(client: TestClient):
    # the package's ReDoc build loads its logo from <page path>/logo-mini.svg instead of a CDN
    logo = client.get("/redoc/logo-mini.svg")
    assert logo.status_code == 200
    assert logo.headers["content-type"] == "image/svg+xml"
    assert b"<svg" in logo.content
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "oauth2" in redirect.text.lower()


def _handlers(metrics_text: str) -> set[str]:
    return set(re.findall(r'^http_requests_total\{[^}]*handler="([^"]*)"', metrics_text, flags=re.MULTILINE))


def test_docs_assets_share_one_metrics_label(client: TestClient):
    before = _handlers(client.get("/metrics").text)
    paths = [
        "/static/docs/swagger/swagger-ui-bundle.js",
        "/static/docs/redoc/redoc.standalone.js",
        "/static/docs/fastapi/favicon.png",
        *(f"/static/docs/no-such-file-{i}.js" for i in range(20)),
    ]
    statuses = [client.get(p).status_code for p in paths]
    assert statuses[:3] == [200, 200, 200] and set(statuses[3:]) == {404}
    added = _handlers(client.get("/metrics").text) - before
    assert added <= {"/static/docs"}, added
    assert not [h for h in _handlers(client.get("/metrics").text) if h.startswith("/static/docs/")]


def test_openapi_422_documented_as_field_errors(client: TestClient):
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's (with input, ctx) unused
    refs = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if "422" in op["responses"]:
                schema = op["responses"]["422"]["content"]["application/json"]["schema"]
                refs[(method, path)] = schema["$ref"].removeprefix("#/components/schemas/")
    assert refs.pop(("post", "/train")) == "DataErrorResponse"
    assert refs and set(refs.values()) == {"ValidationErrorResponse"}, refs
    detail = _resolve(spec, {"$ref": "#/components/schemas/ValidationErrorResponse"})["properties"]["detail"]
    field_error = _resolve(spec, detail["items"])
    assert set(field_error["required"]) == {"loc", "msg", "type"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", {"clump_thickness": 11}),
        ("/predict/batch", {"instances": [{"mitoses": "x"}]}),
        ("/evaluate", {"promote": "maybe"}),
        ("/models/" + "v" * 65 + "/promote", None),
    ],
)
def test_422_response_matches_documented_model(client: TestClient, path: str, body: Any):
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    parsed = ValidationErrorResponse.model_validate(r.json(), strict=True)
    assert parsed.detail and all(err.loc and err.msg and err.type for err in parsed.detail)
    assert set(r.json()["detail"][0]) == {"loc", "msg", "type"}


def test_train_422_for_data_matches_documented_model(client: TestClient, tmp_path: Path):
    outside = tmp_path / "elsewhere.csv"
    r = client.post("/train", json={"data_url": str(outside)}, headers=AUTH)
    assert r.status_code == 422, r.text
    parsed = DataErrorResponse.model_validate(r.json(), strict=True)
    assert isinstance(parsed.detail, str) and "outside DATA_DIR" in parsed.detail
    r = client.post("/train", json={"data_url": ""}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert isinstance(DataErrorResponse.model_validate(r.json(), strict=True).detail, list)


# --- the OpenAPI document -------------------------------------------------------------------------


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
    ("/models/{version}/report", "get"): {"404", "409", "422"},
    ("/models/{version}/report/{name}.png", "get"): {"404", "409", "422"},
    ("/health", "get"): set(),
}


def test_docs_page_served(client: TestClient):
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text.lower()


def test_openapi_documents_every_route(client: TestClient):
    r = client.get("/openapi.json")
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


def test_openapi_predict_examples_are_real_rows(client: TestClient):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    examples = schema["examples"]
    shared = read_bundled().dropna().astype(int)
    classes = []
    for example in examples:
        values = [example[name] for name in FEATURE_NAMES]
        match = shared[(shared[list(FEATURE_COLUMNS)] == values).all(axis=1)]
        assert len(match) >= 1, example
        classes.append(int(match["Class"].iloc[0]))
    assert sorted(classes) == [0, 1]  # one real benign row, one real malignant row
