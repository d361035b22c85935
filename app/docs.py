"""Swagger UI at /docs and ReDoc at /redoc, served offline.

FastAPI's own pages load Swagger UI, ReDoc and the favicon from CDNs, so without internet they are blank.
These are the same pages (FastAPI's ``get_swagger_ui_html`` / ``get_redoc_html``) with every asset served
by the service from the fastapi-standalone-docs package (Swagger UI's and ReDoc's release files, their
licences, FastAPI's favicon), mounted at STATIC_URL. That package's ReDoc build loads its sidebar logo from
``<page path>/logo-mini.svg`` instead of a CDN; no web font is loaded.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# one mount, so the http_* metrics label every asset request with this one handler
STATIC_URL = "/static/docs"
STATIC_DIR = Path(str(files("fastapi_standalone_docs"))) / "static"


def install(app: FastAPI) -> None:
    """Add the docs pages and their assets to an app built with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="docs-static")

    def prefix(request: Request) -> str:
        # behind a proxy that sets root_path, like FastAPI's own pages
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/fastapi/favicon.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/fastapi/favicon.png",
            with_google_fonts=False,
        )

    @app.get(f"{REDOC_URL}/logo-mini.svg", include_in_schema=False)
    async def redoc_logo() -> FileResponse:
        return FileResponse(STATIC_DIR / "redoc" / "logo-mini.svg", media_type="image/svg+xml")
