"""The registry's database goes away (issue 17): serving goes on with the loaded model, the routes that read
or change the registry answer 503 naming the database (never its password), a replica started meanwhile
waits with /ready at 503, and both follow the registry again once the database is back, nothing restarted.

Real ``python -m app`` processes on a private PostgreSQL (tests/postgres.py), stopped and started with pg_ctl.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import httpx
import pytest

from tests.conftest import BUNDLED_CSV, Service, start_service
from tests.hardening.conftest import PREDICT_BODY, TOKEN, client, train_and_promote, wait_serving
from tests.postgres import PostgresCluster
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

QUICK = {"NESTED_REPEATS": "1", "NESTED_FOLDS": "2"}  # a training whose figures no test asserts
BODY = PREDICT_BODY  # a malignant row of the dataset


def _status(service: Service, method: str, path: str, **kwargs: object) -> httpx.Response:
    with client(service) as c:
        return c.request(method, path, **kwargs)  # type: ignore[arg-type]


def test_registry_database_down_serving_goes_on_registry_routes_503_then_recover(
    tmp_path: Path, postgres: PostgresCluster
) -> None:
    url = postgres.create_database(f"registry_outage_{os.getpid()}")
    shared = {
        "REGISTRY_URL": url,
        "ARTIFACT_URL": str(tmp_path / "artifacts"),
        "MODEL_SIGNING_KEY": secrets.token_hex(32),
        **QUICK,
    }
    first = start_service(tmp_path / "first", data_url=str(BUNDLED_CSV), token=TOKEN, extra_env=shared)
    second: Service | None = None
    try:
        version = train_and_promote(first)
        postgres.stop()
        try:
            # the loaded model answers; its version in the body and the header
            r = httpx.post(first.url + "/predict", json=BODY, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == r.headers["x-model-version"] == version
            assert httpx.get(first.url + "/ready", timeout=30).status_code == 200
            # what needs the registry: 503, saying so, without the database's password
            for method, path, body in (
                ("GET", "/models", None),
                ("POST", "/train", {"force": True}),
                ("POST", f"/models/{version}/promote", None),
            ):
                r = _status(first, method, path, json=body)
                assert r.status_code == 503, (path, r.status_code, r.text)
                detail = r.json()["detail"]
                assert "database" in detail and postgres.password not in detail, (path, detail)
            assert postgres.password not in first.log()
            # a replica started now: alive, not ready, nothing served
            second = start_service(
                tmp_path / "second", data_url=str(BUNDLED_CSV), token=TOKEN, extra_env=shared
            )
            r = httpx.get(second.url + "/ready", timeout=30)
            assert r.status_code == 503 and "detail" in r.json(), r.text
            assert httpx.get(second.url + "/health", timeout=30).json()["model_version"] is None
        finally:
            postgres.start()
        # back: the registry routes answer again, and the late replica loads the served model by itself
        wait_until(
            lambda: httpx.get(first.url + "/models", timeout=10).status_code == 200,
            60,
            "GET /models to answer 200 once the database is back",
            interval=0.2,
        )
        wait_serving(second, version, timeout=60)
        r = httpx.post(second.url + "/predict", json=BODY, timeout=30)
        assert r.status_code == 200 and r.headers["x-model-version"] == version, r.text
    finally:
        first.stop()
        if second is not None:
            second.stop()
