"""The FastAPI application: the factory ``create_app``, its lifespan (open the prediction record, load the
served model, follow promotions; at shutdown write what is queued), and how the routes, error handlers,
docs pages and middlewares are put together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.types import ASGIApp

import etl
from app import docs, errors, metrics
from app.middleware import BodySizeLimit, HttpMetrics, PredictFastPath
from app.records.live import LiveFigures
from app.records.service import PredictionRecords
from app.routes import router
from app.serving import ModelHolder
from app.settings import ServiceSettings, get_settings
from etl.errors import DatabaseUnavailableError
from etl.logger import setup_logging
from etl.pipeline import open_registry

log = logging.getLogger(__name__)

DESCRIPTION = """
Predicts whether a breast tumour is **benign or malignant** from nine cytology scores (Wisconsin Breast
Cancer data), and retrains, evaluates, promotes and uploads the model on demand.

> **Research use only.** Predictions are decision support for research. This service is not a medical
> device and must not be used to diagnose, treat or make decisions about any patient.

* `/predict`, `/predict/batch`: open. `/train`, `/evaluate`, `/upload`, `/models/{version}/promote`,
  `/feedback`, `/predictions/{prediction_id}`: need `Authorization: Bearer <API_TOKEN>` when the service sets
  `API_TOKEN`.
* Every answer is kept in the prediction record (time, model version, the nine scores, probability, class,
  threshold) under its `prediction_id`; `POST /feedback` adds the confirmed diagnosis, from which the live
  quality is computed. **No patient identifier is taken or stored**: do not put one anywhere in a request.
* Errors are JSON `{"detail": ...}`; a 422 names the field (and, in a batch, the instance index).
"""


class ServiceApp(FastAPI):
    """FastAPI with the service's own middlewares (``outer_middleware``) outside FastAPI's.

    FastAPI puts ``add_middleware``'s inside its error, telemetry and body-limit layers: three more calls
    and a send wrapper on every request, a few percent of a /predict answered by the fast path (docs/
    performance.md). Ours need none of them: they answer their own errors (the fast path its 500 too) and
    pass everything else on, into those layers.
    """

    outer_middleware: tuple[Middleware, ...] = ()  # outermost first

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for cls, args, kwargs in reversed(self.outer_middleware):
            app = cls(app, *args, **kwargs)
        return app


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the service: ``uvicorn --factory app.main:create_app`` (``python -m app`` runs that).

    Without ``settings`` it reads the environment (``app.settings.get_settings``). With them (the tests) its
    routes get those: they become the override of ``get_settings`` for this app.
    """
    given = settings is not None
    settings = settings or get_settings()
    setup_logging(settings.log_level)
    registry = open_registry(settings)
    holder = ModelHolder(registry)
    records = PredictionRecords(settings)

    def live_figures() -> LiveFigures | None:
        model = holder.current
        return records.figures(model.version, model.feature_distribution) if model else None

    def start_up() -> None:
        """Recover, load the served model, restore the gauges: with the registry's database down, the
        service starts anyway (503 on /ready) and its watcher loads the model once the database answers."""
        try:
            registry.recover()
            holder.refresh()
            # the "time since" gauges survive restarts: read them back from the registry
            metrics.restore_timestamps(registry.last_training_time(), registry.last_promotion_time())
        except DatabaseUnavailableError as exc:
            log.error("starting without the registry's database: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(records.start)
        metrics.LIVE_FIGURES.source = live_figures
        await asyncio.to_thread(start_up)
        if holder.current is None:
            log.warning("no model is served yet: /predict answers 503 until one is trained and promoted")
        # the ~200k objects of the imports and the model never die: keep them out of the cyclic GC, whose
        # full collections would otherwise stall the event loop for tens of milliseconds (the p99)
        gc.freeze()
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
            await asyncio.to_thread(records.stop)  # a graceful shutdown writes what is queued

    app = ServiceApp(
        title="Breast cancer diagnosis service",
        version=etl.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        license_info={"name": "Research use only; not a medical device"},
        docs_url=None,  # app.docs serves /docs and /redoc with local assets (FastAPI's load them from CDNs)
        redoc_url=None,
        # the service exports Prometheus metrics and no OpenTelemetry; left on, FastAPI asks OpenTelemetry
        # for its three providers on every request (environment lookups), ~5% of a /predict
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if given:
        app.dependency_overrides[get_settings] = lambda: settings
    app.state.holder = holder
    app.state.records = records
    errors.install(app)
    app.include_router(router)
    docs.install(app)
    metrics.init_labels()
    app.outer_middleware = (
        # http_* request metrics by route template (the instrumentator's families; /metrics not counted),
        # outermost, so a 413 of the body limit is counted as the 413 it is
        Middleware(HttpMetrics, excluded_handlers=("/metrics",)),
        Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes),
        # valid /predict and /predict/batch are answered here, inside the instrumentation
        Middleware(PredictFastPath, holder=holder, max_batch=settings.max_batch, records=records),
    )
    return app
