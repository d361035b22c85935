"""The FastAPI application: factory, lifespan (load the served model), middleware and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import etl
from app import errors, metrics
from app.routes import router
from app.state import ModelHolder
from etl.logger import setup_logging
from etl.registry import Registry
from etl.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Predicts whether a breast tumour is **benign or malignant** from nine cytology scores (Wisconsin Breast
Cancer data), and retrains, evaluates, promotes and uploads the model on demand.

> **Research use only.** Predictions are decision support for research. This service is not a medical
> device and must not be used to diagnose, treat or make decisions about any patient.

* `/predict`, `/predict/batch`: open. `/train`, `/evaluate`, `/upload`, `/models/{version}/promote`: need
  `Authorization: Bearer <API_TOKEN>` when the service sets `API_TOKEN`.
* Errors are JSON `{"detail": ...}`; a 422 names the field (and, in a batch, the instance index).
"""


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, without reading them whole (pure ASGI)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._reject(send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = b'{"detail":"request body is larger than MAX_BODY_BYTES=%d bytes"}' % self.max_bytes
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Tests pass their own ``Settings``; production reads the environment."""
    settings = settings or get_settings()
    setup_logging(settings.log_level)
    registry = Registry(settings.results_dir)
    holder = ModelHolder(registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(registry.recover)
        await asyncio.to_thread(holder.refresh)
        if holder.current is None:
            log.warning("no model is served yet: /predict answers 503 until one is trained and promoted")
        watcher = (
            asyncio.create_task(holder.watch(settings.model_poll_seconds))
            if settings.model_poll_seconds
            else None
        )
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    app = FastAPI(
        title="Breast cancer diagnosis service",
        version=etl.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        license_info={"name": "Research use only; not a medical device"},
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.holder = holder
    errors.install(app)
    app.include_router(router)
    metrics.init_labels()
    Instrumentator(
        should_group_status_codes=False,
        should_ignore_untemplated=True,
        excluded_handlers=["/metrics"],
        should_instrument_requests_inprogress=True,
        inprogress_labels=True,
    ).instrument(app, latency_lowr_buckets=metrics.LATENCY_BUCKETS).expose(app, include_in_schema=False)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app on first access, so importing this module has no side effects
    if name == "app":
        return create_app()
    raise AttributeError(name)
