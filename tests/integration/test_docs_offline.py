"""Swagger UI and ReDoc in a real headless Chromium against a real service, with every other host blocked.

The browser may reach 127.0.0.1 only (tests/integration/browser.py): any request elsewhere (a CDN, a web font,
a favicon) is aborted and recorded, and fails the test, as does a local request that fails or answers an
error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.conftest import BUNDLED_CSV, Service, start_service, wait_for
from tests.integration.browser import TIMEOUT_MS, Traffic, chromium, offline_page

pytestmark = pytest.mark.integration

TOKEN = "docs-offline-token-0123456789ab"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A real service serving a model trained and promoted over HTTP on the bundled CSV."""
    workdir = tmp_path_factory.mktemp("docs-offline")
    service = start_service(workdir / "svc", data_url=str(BUNDLED_CSV), token=TOKEN)
    try:
        with httpx.Client(base_url=service.url, headers=service.auth(), timeout=180) as http:
            for path in ("/train", "/evaluate"):
                r = http.post(path, json={})
                assert r.status_code == 200, f"{path}: {r.status_code} {r.text}\n{service.log()}"
        wait_for(service, "/ready", 60)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def spec(service: Service) -> dict[str, Any]:
    r = httpx.get(service.url + "/openapi.json", timeout=30)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def _open(page: Page, traffic: Traffic, url: str) -> None:
    """Load ``url``; a script or stylesheet from another host fails here, not after a wait on a blank page."""
    page.goto(url)  # returns after the load event: every script and stylesheet was fetched or refused
    assert traffic.outside == [], f"requests to another host: {traffic.outside}"


def _settle(page: Page, traffic: Traffic) -> None:
    """Wait until the page has no request in flight, then check that none left the machine or failed."""
    page.wait_for_load_state("networkidle")
    assert traffic.outside == [], f"requests to another host: {traffic.outside}"
    assert traffic.failed == [], f"failed local requests: {traffic.failed}"


def _operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def test_docs_swagger_lists_every_operation_offline(
    browser: Browser, service: Service, spec: dict[str, Any]
) -> None:
    expected = _operations(spec)
    assert len(expected) >= 10, expected
    with offline_page(browser) as (page, traffic):
        _open(page, traffic, service.url + "/docs")
        page.wait_for_function(
            "n => document.querySelectorAll('.opblock').length >= n", arg=len(expected), timeout=TIMEOUT_MS
        )
        listed = page.eval_on_selector_all(
            ".opblock",
            """blocks => blocks.map(b => [
                b.querySelector('.opblock-summary-method').textContent.trim(),
                b.querySelector('.opblock-summary-path').getAttribute('data-path'),
            ])""",
        )
        _settle(page, traffic)
    assert {tuple(op) for op in listed} == expected
    assert len(listed) == len(expected), listed
    paths = {urlsplit(u).path for u in traffic.local}
    assert {"/docs", "/openapi.json", "/static/docs/swagger/swagger-ui-bundle.js"} <= paths, paths


def test_docs_swagger_try_it_out_predict_example_returns_200(
    browser: Browser, service: Service, spec: dict[str, Any]
) -> None:
    example = spec["components"]["schemas"]["PredictRequest"]["examples"][0]
    with offline_page(browser) as (page, traffic):
        _open(page, traffic, service.url + "/docs")
        block = page.locator(".opblock-post").filter(has=page.locator('[data-path="/predict"]'))
        block.locator(".opblock-summary").click()
        block.locator("button.try-out__btn").click()
        body = block.locator("textarea.body-param__text")
        assert json.loads(body.input_value()) == example  # Swagger pre-fills the schema's first example
        with page.expect_response(
            lambda r: urlsplit(r.url).path == "/predict" and r.request.method == "POST"
        ) as answer:
            block.locator("button.execute").click()
        response = answer.value
        status, sent, result = response.status, response.request.post_data_json, response.json()
        shown_status = block.locator(".live-responses-table .response .response-col_status")
        shown_status.wait_for()
        shown = shown_status.inner_text().strip()
        shown_body = block.locator(".live-responses-table .response-col_description pre").first.inner_text()
        _settle(page, traffic)
    assert status == 200, result
    assert sent == example
    assert result["label"] in ("benign", "malignant")
    assert result["model_version"] == httpx.get(service.url + "/ready", timeout=10).json()["model_version"]
    assert shown == "200"
    assert json.loads(shown_body) == result


def test_docs_redoc_renders_offline(browser: Browser, service: Service, spec: dict[str, Any]) -> None:
    summaries = [op["summary"] for ops in spec["paths"].values() for op in ops.values()]
    with offline_page(browser) as (page, traffic):
        _open(page, traffic, service.url + "/redoc")
        page.get_by_role("heading", name=spec["info"]["title"]).first.wait_for()
        for summary in summaries:
            page.get_by_text(summary, exact=True).first.wait_for(state="attached")
        text = page.inner_text("body")
        _settle(page, traffic)
    assert "Research use only" in text
    paths = {urlsplit(u).path for u in traffic.local}
    assert {"/redoc", "/openapi.json", "/redoc/logo-mini.svg"} <= paths
    assert "/static/docs/redoc/redoc.standalone.js" in paths
