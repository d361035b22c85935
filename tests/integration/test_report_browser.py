"""The evaluation report in a real headless Chromium with the network blocked, from a real service trained on
the bundled data: served by GET /models/{version}/report, and opened as a file (as from an e-mail attachment).

It asks for nothing (no other host, no other URL at all: its figures are data: images), every figure decodes,
the Content-Security-Policy blocks nothing it needs, and it is not blank: its screenshot has far more ink than
an empty page's. A rejected version's page says so at the top, in red, with the failed checks.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.conftest import BUNDLED_CSV, Service, start_service
from tests.integration.browser import Traffic, chromium, offline_page
from tests.registry_support import report_path

pytestmark = pytest.mark.integration

TOKEN = "report-browser-token-0123456789"
VIEWPORT = {"width": 1200, "height": 900}
FIGURES = 5


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A real service with a promoted version and a rejected one (trained on flipped labels), both evaluated
    over HTTP; ``extra`` holds their versions and the rejected verdict."""
    workdir = tmp_path_factory.mktemp("report-browser")
    service = start_service(workdir / "svc", data_url=str(BUNDLED_CSV), token=TOKEN)
    try:
        with httpx.Client(base_url=service.url, headers=service.auth(), timeout=300) as http:
            passed = _train_and_evaluate(http, {})
            assert passed["gate"]["passed"] and passed["promoted"], passed["gate"]["reasons"]
            frame = pd.read_csv(BUNDLED_CSV, dtype=str)
            frame["Class"] = 1 - frame["Class"].astype(int)
            flipped = Path(service.env["DATA_DIR"]) / "flipped.csv"
            flipped.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(flipped, index=False)
            rejected = _train_and_evaluate(http, {"data_url": str(flipped)})
            assert not rejected["gate"]["passed"]
        service.extra.update(passed=passed["version"], rejected=rejected["version"], verdict=rejected["gate"])
        yield service
    finally:
        service.stop()


def _train_and_evaluate(http: httpx.Client, train_body: dict[str, Any]) -> dict[str, Any]:
    trained = http.post("/train", json=train_body)
    assert trained.status_code == 200, trained.text
    evaluated = http.post("/evaluate", json={"version": trained.json()["version"]})
    assert evaluated.status_code == 200, evaluated.text
    body: dict[str, Any] = evaluated.json()
    return body


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def _ink(png: bytes) -> float:
    """The share of a screenshot's pixels that are not white."""
    from matplotlib.image import imread

    rgb = imread(io.BytesIO(png), format="png")[..., :3]
    return float(np.mean(np.any(rgb < 0.95, axis=-1)))


def _watch(page: Page) -> tuple[list[str], list[str]]:
    """Every URL the page requests (data: images too) and every console error (a CSP violation is one)."""
    requested: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    return requested, errors


def _figures(page: Page) -> list[list[Any]]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])"
    )


def _check_offline(traffic: Traffic, requested: list[str], errors: list[str], page_url: str) -> None:
    assert traffic.outside == [], f"requests to another host: {traffic.outside}"
    assert traffic.failed == [], traffic.failed
    assert [u for u in requested if not u.startswith("data:")] == [page_url]
    assert errors == [], errors


def test_report_served_renders_offline_every_figure_and_not_blank(browser: Browser, service: Service):
    url = f"{service.url}/models/{service.extra['passed']}/report"
    with offline_page(browser, viewport=VIEWPORT) as (page, traffic):
        requested, errors = _watch(page)
        page.goto(url)
        page.wait_for_load_state("networkidle")
        figures = _figures(page)
        header = page.inner_text("header")
        shot = page.screenshot(full_page=True)
        page.set_content("<!DOCTYPE html><html><body></body></html>")
        blank = page.screenshot(full_page=True)
    _check_offline(traffic, requested, errors, url)
    assert traffic.local == [url]
    assert len(figures) == FIGURES
    for complete, width, height, src in figures:
        assert complete and width >= 500 and height >= 300 and src == "data:image/png;base64,"
    assert _ink(blank) < 0.001
    assert _ink(shot) > 0.05, f"the report looks blank: {_ink(shot):.4f} of its pixels are not white"
    assert f"model version {service.extra['passed']}" in header and "PASSED the quality gate" in header


def test_report_file_opens_offline_as_an_attachment(browser: Browser, service: Service, tmp_path: Path):
    version = service.extra["passed"]
    attachment = tmp_path / "Downloads" / "report.html"  # saved anywhere, away from the registry
    attachment.parent.mkdir()
    shutil.copy(report_path(service.results_dir, version), attachment)
    with offline_page(browser, allow=(attachment.as_uri(),), viewport=VIEWPORT, offline=True) as (
        page,
        traffic,
    ):
        requested, errors = _watch(page)
        page.goto(attachment.as_uri())
        page.wait_for_load_state("load")
        figures = _figures(page)
        text = page.inner_text("body")
        shot = page.screenshot(full_page=True)
    _check_offline(traffic, requested, errors, attachment.as_uri())
    assert [f[0] and f[1] > 0 for f in figures] == [True] * FIGURES
    assert _ink(shot) > 0.05
    assert "Model card" in text and "not a medical device" in text


def test_report_rejected_version_shows_why_at_the_top(browser: Browser, service: Service):
    version = service.extra["rejected"]
    url = f"{service.url}/models/{version}/report"
    with offline_page(browser, viewport=VIEWPORT) as (page, traffic):
        requested, errors = _watch(page)
        page.goto(url)
        header = page.locator("header")
        box = header.bounding_box()
        text = header.inner_text()
        background = header.evaluate("h => getComputedStyle(h).backgroundColor")
        top = page.screenshot()  # the first screen only: what a reader sees before scrolling
    _check_offline(traffic, requested, errors, url)
    assert box is not None and box["y"] < 5
    assert "REJECTED by the quality gate: this version is not served." in text
    for reason in service.extra["verdict"]["reasons"]:
        assert reason in text
    assert background == "rgb(179, 38, 30)"
    from matplotlib.image import imread

    red = np.all(
        np.abs(imread(io.BytesIO(top), format="png")[..., :3] - [179 / 255, 38 / 255, 30 / 255]) < 0.02, -1
    )
    assert float(np.mean(red)) > 0.1  # the banner fills a good part of the first screen
