"""Ambiguous or loosely typed requests are refused, and the token is checked before anything else
(issue 12, findings 8 and 9).

- A token route answers 401 to a caller without the token whatever the body (it was 422 for a malformed
  body: the body was parsed before the token was checked).
- Two Authorization headers are refused (the first used to win).
- A JSON object with a duplicate key is a 422 naming the key (the last used to win), on the fast path of
  /predict and /predict/batch too.
- A version with a trailing newline, or with non-ASCII digits, is not a version (``$`` and ``\\d`` let them
  through).
- Request models are strict: ``"promote": 0`` or ``"version": 1`` is a 422, not coerced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import Service
from tests.hardening.conftest import PREDICT_BODY, TOKEN, models, start_promoted

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = ["/train", "/evaluate", "/upload", "/models/{version}/promote"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, bundled_csv: Path) -> Iterator[tuple[Service, str]]:
    svc, version = start_promoted(tmp_path_factory.mktemp("strict") / "svc", str(bundled_csv))
    try:
        yield svc, version
    finally:
        svc.stop()


def _post(svc: Service, path: str, body: bytes, headers: Any = None) -> httpx.Response:
    return httpx.post(svc.url + path, content=body, headers=headers or JSON, timeout=60)


def _state(svc: Service) -> tuple[Any, list[Path]]:
    return models(svc), sorted(svc.upload_dir.glob("*"))


# --- the token first ---------------------------------------------------------------------------

BODIES = {
    "malformed-json": b'{"version": ',
    "not-utf8": b'{"version": "\xff\xfe"}',
    "wrong-types": b'{"promote": "yes", "version": 7, "data_url": []}',
    "extra-field": b'{"nope": 1}',
    "duplicate-key": b'{"version": "a", "version": "b"}',
    "deep-nesting": b"[" * 50_000 + b"]" * 50_000,
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("body", list(BODIES))
@pytest.mark.parametrize("auth", ["none", "wrong"])
def test_auth_checked_before_body(service: tuple[Service, str], route: str, body: str, auth: str) -> None:
    svc, version = service
    before = _state(svc)
    headers = {**JSON, **({"Authorization": "Bearer not-the-token-0123456789"} if auth == "wrong" else {})}
    r = _post(svc, route.format(version=version), BODIES[body], headers)
    assert r.status_code == 401, r.text
    detail = r.json()["detail"]
    assert detail.startswith("missing bearer token" if auth == "none" else "invalid bearer token"), detail
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert _state(svc) == before


@pytest.mark.parametrize("route", ["/train", "/evaluate", "/upload"])
@pytest.mark.parametrize("body", ["malformed-json", "not-utf8", "wrong-types", "extra-field", "deep-nesting"])
def test_auth_with_token_body_errors_are_422(service: tuple[Service, str], route: str, body: str) -> None:
    svc, _ = service
    before = _state(svc)
    r = _post(svc, route, BODIES[body], {**JSON, **AUTH})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list) and r.json()["detail"], r.text
    assert _state(svc) == before


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "values",
    [
        (f"Bearer {TOKEN}", "Bearer not-the-token-0123456789"),
        ("Bearer not-the-token-0123456789", f"Bearer {TOKEN}"),
        (f"Bearer {TOKEN}", f"Bearer {TOKEN}"),
    ],
    ids=["good-then-bad", "bad-then-good", "good-twice"],
)
def test_auth_two_authorization_headers_refused(
    service: tuple[Service, str], route: str, values: tuple[str, str]
) -> None:
    svc, version = service
    before = _state(svc)
    headers = httpx.Headers([("Content-Type", "application/json"), *(("Authorization", v) for v in values)])
    r = _post(svc, route.format(version=version), b"{}", headers)
    assert r.status_code == 401, r.text
    assert r.json() == {
        "detail": "2 Authorization headers: send exactly one, 'Authorization: Bearer <API_TOKEN>'"
    }
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_request"'
    assert TOKEN not in r.text
    assert _state(svc) == before


# --- duplicate JSON keys -----------------------------------------------------------------------


def _object(pairs: list[tuple[str, Any]]) -> bytes:
    return ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}").encode()


_ROW = list(PREDICT_BODY.items())
_CSV_ROW = list(
    zip(
        [
            "Cl.thickness",
            "Cell.size",
            "Cell.shape",
            "Marg.adhesion",
            "Epith.c.size",
            "Bare.nuclei",
            "Bl.cromatin",
            "Normal.nucleoli",
            "Mitoses",
        ],
        PREDICT_BODY.values(),
        strict=True,
    )
)
_DUP_SINGLE = _object([("clump_thickness", 1), *_ROW])  # first 1, last 8: last-wins would answer
_DUP_ESCAPED = _object(_ROW).replace(b"}", b', "clump\\u005fthickness": 1}')  # the same key, spelled escaped
_DUP_BATCH_ROW = b'{"instances": [' + _object(_ROW) + b", " + _DUP_SINGLE + b"]}"
_DUP_BATCH_CSV = b'{"instances": [' + _object([("Mitoses", 10), *_CSV_ROW]) + b"]}"
_DUP_INSTANCES = b'{"instances": [' + _object(_ROW) + b'], "instances": [' + _object(_ROW) + b"]}"
DUPLICATES = {
    "predict": ("/predict", _DUP_SINGLE, "clump_thickness"),
    "predict-escaped-key": ("/predict", _DUP_ESCAPED, "clump_thickness"),
    "batch-row": ("/predict/batch", _DUP_BATCH_ROW, "clump_thickness"),
    "batch-csv-names": ("/predict/batch", _DUP_BATCH_CSV, "Mitoses"),
    "batch-instances": ("/predict/batch", _DUP_INSTANCES, "instances"),
    "evaluate": ("/evaluate", b'{"promote": false, "promote": true}', "promote"),
    "train": ("/train", b'{"data_url": "/nope.csv", "data_url": "/nope2.csv"}', "data_url"),
    "upload": ("/upload", b'{"version": null, "version": null}', "version"),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_json_duplicate_key_422_naming_it(service: tuple[Service, str], case: str) -> None:
    svc, _ = service
    path, body, key = DUPLICATES[case]
    before = _state(svc)
    r = _post(svc, path, body, {**JSON, **AUTH})
    assert r.status_code == 422, r.text
    assert r.json() == {
        "detail": [
            {
                "loc": ["body"],
                "msg": f"duplicate key {key!r} in a JSON object: send each key once",
                "type": "duplicate_key",
            }
        ]
    }
    assert _state(svc) == before


def test_json_duplicate_key_long_key_shortened(service: tuple[Service, str]) -> None:
    svc, _ = service
    key = "k" * 10_000
    r = _post(svc, "/evaluate", _object([(key, 1), (key, 2)]), {**JSON, **AUTH})
    assert r.status_code == 422 and len(r.text) < 400, r.text[:400]
    assert "duplicate key 'kkkk" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", _object(_ROW)),
        ("/predict", _object(_CSV_ROW)),
        ("/predict/batch", b'{"instances": [' + _object(_ROW) + b", " + _object(_CSV_ROW) + b"]}"),
    ],
    ids=["single", "single-csv-names", "batch"],
)
def test_json_unique_keys_still_served(service: tuple[Service, str], path: str, body: bytes) -> None:
    svc, version = service
    r = _post(svc, path, body)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == version


# --- version names -----------------------------------------------------------------------------


def _digits(version: str, zero: int) -> str:
    """``version`` with the digits of its timestamp in another script (``\\d`` matches them; the hex part
    after the dash stays ASCII)."""
    stamp, dash, suffix = version.partition("-")
    return stamp.translate({ord(d): chr(zero + int(d)) for d in "0123456789"}) + dash + suffix


@pytest.mark.parametrize("variant", ["trailing-newline", "fullwidth-digits", "arabic-indic-digits"])
@pytest.mark.parametrize("route", ["/evaluate", "/upload", "/models/{version}/promote"])
def test_version_pattern_is_exact(service: tuple[Service, str], variant: str, route: str) -> None:
    svc, version = service
    name = {
        "trailing-newline": version + "\n",
        "fullwidth-digits": _digits(version, 0xFF10),
        "arabic-indic-digits": _digits(version, 0x0660),
    }[variant]
    before = _state(svc)
    if "{version}" in route:
        r = httpx.post(f"{svc.url}/models/{quote(name, safe='')}/promote", headers=AUTH, timeout=60)
    else:
        r = httpx.post(svc.url + route, json={"version": name}, headers=AUTH, timeout=60)
    assert r.status_code == 404, r.text
    assert r.json()["detail"].startswith(
        f"{name!r} is not a model version (expected YYYYMMDDTHHMMSSZ-xxxxxxxx"
    )
    assert _state(svc) == before


# --- strict request models ---------------------------------------------------------------------

LAX = [
    ("/evaluate", {"promote": 0}, ["body", "promote"], "bool_type"),
    ("/evaluate", {"promote": 1}, ["body", "promote"], "bool_type"),
    ("/evaluate", {"promote": "true"}, ["body", "promote"], "bool_type"),
    ("/evaluate", {"promote": "false"}, ["body", "promote"], "bool_type"),
    ("/evaluate", {"promote": 1.0}, ["body", "promote"], "bool_type"),
    ("/evaluate", {"version": 20250101}, ["body", "version"], "string_type"),
    ("/upload", {"version": 1}, ["body", "version"], "string_type"),
    ("/upload", {"version": True}, ["body", "version"], "string_type"),
    ("/train", {"data_url": 123}, ["body", "data_url"], "string_type"),
    ("/train", {"data_url": ["a.csv"]}, ["body", "data_url"], "string_type"),
    ("/predict", {**PREDICT_BODY, "mitoses": "1"}, ["body", "mitoses"], "int_type"),
    ("/predict", {**PREDICT_BODY, "mitoses": 1.0}, ["body", "mitoses"], "int_type"),
    ("/predict", {**PREDICT_BODY, "mitoses": True}, ["body", "mitoses"], "int_type"),
    (
        "/predict/batch",
        {"instances": [{**PREDICT_BODY, "mitoses": "1"}]},
        ["body", "instances", 0, "mitoses"],
        "int_type",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "loc", "kind"), LAX, ids=[f"{p}-{json.dumps(b)[:40]}" for p, b, _, _ in LAX]
)
def test_strict_models_no_lax_coercion(
    service: tuple[Service, str], path: str, body: dict[str, Any], loc: list[Any], kind: str
) -> None:
    svc, _ = service
    before = _state(svc)
    r = httpx.post(svc.url + path, json=body, headers=AUTH, timeout=60)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert [(e["loc"], e["type"]) for e in errors] == [(loc, kind)], errors
    assert _state(svc) == before
