"""Headless Chromium for the integration tests: Debian's package (`make system-deps` installs it), driven with
Playwright (`playwright install` is never needed), and pages that may reach 127.0.0.1 only.

Any request elsewhere (a CDN, a web font, a favicon) is aborted and recorded, as is a local request that fails
or answers an error, so a test can fail on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Request, Response, Route, WebSocket, sync_playwright

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
TIMEOUT_MS = 90_000


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, with a fresh temporary profile (Playwright's --user-data-dir)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium package")
    with sync_playwright() as pw:
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


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname == "127.0.0.1"


@contextlib.contextmanager
def offline_page(
    browser: Browser, *, allow: tuple[str, ...] = (), **context_options: Any
) -> Iterator[tuple[Page, Traffic]]:
    """A page in a fresh browser context that can reach 127.0.0.1, the URLs in ``allow`` (a file: page) and
    nothing else."""
    traffic = Traffic()
    context = browser.new_context(**context_options)

    def route(route: Route) -> None:
        url = route.request.url
        if is_local(url) or url in allow:
            traffic.local.append(url)
            route.continue_()
        else:
            traffic.outside.append(url)
            route.abort("blockedbyclient")

    def on_failed(request: Request) -> None:
        if is_local(request.url):
            traffic.failed.append(f"{request.method} {request.url}: {request.failure}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            traffic.failed.append(f"{response.request.method} {response.url}: {response.status}")

    def on_websocket(ws: WebSocket) -> None:
        if not is_local(ws.url):
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
