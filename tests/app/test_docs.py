"""The API's own documentation in-process: the docs pages load only the service's own assets, and those assets
share one metrics label."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.pipeline_support import build_served_registry, copy_tree, make_settings

TOKEN = "docs-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("docs-template")
    build_served_registry(base)
    return base


@pytest.fixture
def client(template: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The app over a copy of a registry with one promoted version; no network (no retries, no Drive)."""
    base = copy_tree(template, tmp_path / "svc")
    settings = make_settings(base, api_token=TOKEN, model_poll_seconds=0, download_retries=0)
    with TestClient(create_app(settings)) as c:
        yield c


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
