"""Swagger UI and ReDoc in a real headless Chromium against a real service, with every other host blocked.

The browser may reach 127.0.0.1 only: any request elsewhere (a CDN, a web font, a favicon) is aborted and
recorded, and fails the test, as does a local request that fails or answers an error. Chromium is Debian's
(`make system-deps` installs it), driven with Playwright; `playwright install` is never needed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Response, Route, WebSocket, sync_playwright

from tests.conftest import BUNDLED_CSV, Service, start_service, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# what runs here as root in a container: no sandbox, no GPU, and none of Chromium's own background traffic
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "docs-offline-token-0123456789ab"
TIMEOUT_MS = 90_000


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
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium package")
    with sync_playwright() as pw:
        # Playwright starts it headless with a fresh temporary profile (--user-data-dir) each launch
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Traffic:
    """What a page asked for: local URLs, attempts to reach another host, and local failures."""

    local: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname == "127.0.0.1"


@contextlib.contextmanager
def offline_page(browser: Browser) -> Iterator[tuple[Page, Traffic]]:
    """A page in a fresh browser context that can reach 127.0.0.1 and nothing else."""
    traffic = Traffic()
    context = browser.new_context()

    def route(route: Route) -> None:
        url = route.request.url
        if _is_local(url):
            traffic.local.append(url)
            route.continue_()
        else:
            traffic.outside.append(url)
            route.abort("blockedbyclient")

    def on_failed(request: Request) -> None:
        if _is_local(request.url):
            traffic.failed.append(f"{request.method} {request.url}: {request.failure}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            traffic.failed.append(f"{response.request.method} {response.url}: {response.status}")

    def on_websocket(ws: WebSocket) -> None:
        if not _is_local(ws.url):
            traffic.outside.append(ws.url)

    context.route("**/*", route)
    context.on("requestfailed", on_failed)
    context.on("response", on_response)
    page = context.new_page()
    page.on("websocket", on_websocket)
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page, traffic
    finally:
        context.close()


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
