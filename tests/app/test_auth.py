"""The token-protected routes (app/auth.py, app/deps.py) in-process."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.settings import get_settings
from tests.app.conftest import AUTH, TOKEN, Served, client_for

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
    assert r.json() == {
        "version": served.version,
        "previous_version": served.version,
        "promoted": True,
        "epoch": 2,
    }


# --- the settings come from the one dependency, so a test can override them ----------------------

OTHER = "other-token-9876543210"


def test_protected_route_token_from_overridden_settings(client: TestClient, served: Served):
    """TokenRoute (before the body) and require_token (the dependency) both read ``get_settings``."""
    client.app.dependency_overrides[get_settings] = lambda: served.settings(api_token=OTHER)
    bad_body = {"promote": "maybe"}
    old = client.post("/evaluate", json=bad_body, headers=AUTH)
    assert old.status_code == 401 and old.json()["detail"] == "invalid bearer token"
    new = client.post("/evaluate", json=bad_body, headers={"Authorization": f"Bearer {OTHER}"})
    assert new.status_code == 422 and new.json()["detail"][0]["loc"] == ["body", "promote"]
    r = client.post(f"/models/{served.version}/promote", headers={"Authorization": f"Bearer {OTHER}"})
    assert r.status_code == 200 and r.json()["promoted"] is True


def test_metrics_token_from_overridden_settings(client: TestClient, served: Served):
    assert client.get("/metrics").status_code == 200
    client.app.dependency_overrides[get_settings] = lambda: served.settings(metrics_token=OTHER)
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "missing bearer token: send 'Authorization: Bearer <METRICS_TOKEN>'"
    assert client.get("/metrics", headers={"Authorization": f"Bearer {OTHER}"}).status_code == 200
