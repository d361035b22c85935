"""Routes: validate, call etl, record a metric, return a response model. No pipeline logic here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Body, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST

from app import metrics
from app.auth import StrictJSONRoute, TokenRoute, require_metrics_token, require_token
from app.errors import REJECTIONS, error_responses
from app.schemas import (
    CurrentModelResponse,
    EvaluateRequest,
    EvaluateResponse,
    HealthResponse,
    ModelsResponse,
    ModelSummary,
    PredictBatchRequest,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
    PromoteResponse,
    ReadyResponse,
    TrainRequest,
    TrainResponse,
    UploadRequest,
    UploadResponse,
)
from app.serving import ModelHolder, batch_too_large, predict_many, predict_one
from app.settings import ServiceSettings
from etl import pipeline
from etl.errors import EtlError, NoServedModelError, StorageError
from etl.evaluate import HEADLINE
from etl.load import check_override_source
from etl.registry import Registry
from etl.upload_results import upload_to_storage

router = APIRouter(route_class=StrictJSONRoute)
# the routes that change state: API_TOKEN checked before the body is read (app/auth.py)
protected = APIRouter(route_class=TokenRoute, dependencies=[Depends(require_token)])
T = TypeVar("T")


def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]


def _timed_step(step: str, fn: Callable[[], T]) -> T:
    """Run one pipeline step, counting its outcome; a refused request counts as rejected, untimed."""
    started = time.perf_counter()
    try:
        result = fn()
    except REJECTIONS:
        metrics.STEP_OUTCOMES.labels(step, "rejected").inc()
        raise
    except EtlError:
        metrics.STEP_OUTCOMES.labels(step, "failure").inc()
        metrics.STEP_DURATION.labels(step).observe(time.perf_counter() - started)
        raise
    metrics.STEP_DURATION.labels(step).observe(time.perf_counter() - started)
    metrics.STEP_OUTCOMES.labels(step, "success").inc()
    return result


# --- prediction ---------------------------------------------------------------------------------


@router.post(
    "/predict",
    response_model=PredictResponse,
    status_code=200,
    summary="Predict one tumour",
    tags=["predict"],
    responses=error_responses(413, 422, 503),
)
async def predict(body: PredictRequest, holder: HolderDep) -> dict[str, Any]:
    """Classify one tumour from its nine cytology scores with the served model (research use only)."""
    return predict_one(holder.get(), body.row())


@router.post(
    "/predict/batch",
    response_model=PredictBatchResponse,
    status_code=200,
    summary="Predict many tumours",
    tags=["predict"],
    responses=error_responses(413, 422, 503),
)
def predict_batch(body: PredictBatchRequest, holder: HolderDep, settings: SettingsDep) -> dict[str, Any]:
    """Classify up to MAX_BATCH tumours in one call; predictions come back in request order."""
    refusal = batch_too_large(len(body.instances), settings.max_batch)
    if refusal:
        raise RequestValidationError([{"loc": ("body", "instances"), "msg": refusal, "type": "too_long"}])
    model = holder.get()
    return predict_many(model, np.array([inst.row() for inst in body.instances], dtype=float))


# --- probes -------------------------------------------------------------------------------------


@router.get("/health", response_model=HealthResponse, summary="Liveness", tags=["ops"])
async def health() -> dict[str, str]:
    """The process is alive (says nothing about the model; see /ready)."""
    return {"status": "ok"}


@router.get(
    "/ready", response_model=ReadyResponse, summary="Readiness", tags=["ops"], responses=error_responses(503)
)
async def ready(holder: HolderDep) -> dict[str, str]:
    """200 only when a verified model is loaded and serving; 503 otherwise."""
    return {"status": "ready", "model_version": holder.get().version}


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_metrics_token)])
def prometheus_metrics() -> Response:
    """Prometheus exposition; needs ``Authorization: Bearer <METRICS_TOKEN>`` when the service sets one."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# --- pipeline -----------------------------------------------------------------------------------


@protected.post(
    "/train",
    response_model=TrainResponse,
    status_code=200,
    summary="Train a new model version",
    tags=["pipeline"],
    responses=error_responses(401, 409, 413, 422, 502, data_errors=True),
)
def train(
    settings: SettingsDep, request: Request, body: Annotated[TrainRequest | None, Body()] = None
) -> dict[str, Any]:
    """Load and validate the data, train, and register a new version (served only after /evaluate)."""
    registry: Registry = request.app.state.registry
    body = body or TrainRequest()
    data_url = body.data_url
    if data_url:  # an allowed host with public addresses, or a file under DATA_DIR; refused before the lock
        check_override_source(data_url, settings)
    summary = _timed_step(
        "train", lambda: pipeline.train_version(settings, registry, data_url, force=body.force)
    )
    if not summary.unchanged:
        metrics.LAST_TRAINING.set(time.time())
    return summary.to_dict()


@protected.post(
    "/evaluate",
    response_model=EvaluateResponse,
    status_code=200,
    summary="Evaluate a version and promote it if it passes the gate",
    tags=["pipeline"],
    responses=error_responses(401, 404, 409, 413, 422),
)
def evaluate(
    settings: SettingsDep, holder: HolderDep, body: Annotated[EvaluateRequest | None, Body()] = None
) -> dict[str, Any]:
    """Judge a version with the quality gate (nested estimates, reference set, served model side by side);
    a failed gate is a 200 with ``gate.passed`` false."""
    body = body or EvaluateRequest()
    summary = _timed_step(
        "evaluate",
        lambda: pipeline.evaluate_version(settings, holder.registry, body.version, promote=body.promote),
    )
    if not summary.gate.passed:
        metrics.GATE_FAILURES.inc()
    if summary.promoted:
        metrics.STEP_OUTCOMES.labels("promote", "success").inc()
        metrics.STEP_DURATION.labels("promote").observe(summary.promote_duration_seconds or 0.0)
        metrics.LAST_PROMOTION.set(time.time())
        holder.refresh()
    return summary.to_dict()


@protected.post(
    "/upload",
    response_model=UploadResponse,
    status_code=200,
    summary="Back up a version locally and upload it to Google Drive",
    tags=["pipeline"],
    responses=error_responses(401, 404, 409, 413, 422, 502),
)
def upload(
    settings: SettingsDep, holder: HolderDep, body: Annotated[UploadRequest | None, Body()] = None
) -> dict[str, Any]:
    """Copy model.joblib and metrics.json to upload/<timestamp>/ and, when configured, to Google Drive."""
    registry = holder.registry
    version = (body.version if body else None) or registry.require_served()
    try:
        result = _timed_step(
            "upload", lambda: upload_to_storage(version, registry=registry, settings=settings)
        )
    except StorageError as exc:
        metrics.DRIVE_FAILURES.inc()
        metrics.DRIVE_RETRIES.inc(exc.retries)
        raise
    data = result.to_dict()
    retries = int(data.get("drive", {}).get("retries", 0) or 0)
    if retries:
        metrics.DRIVE_RETRIES.inc(retries)
    return data


@protected.post(
    "/models/{version}/promote",
    response_model=PromoteResponse,
    status_code=200,
    summary="Serve an earlier version (rollback) or a passed one",
    tags=["models"],
    responses=error_responses(401, 404, 409, 422),
)
def promote(
    holder: HolderDep, version: Annotated[str, Path(max_length=64, description="a version from GET /models")]
) -> dict[str, Any]:
    """Serve ``version`` if it passed the quality gate and its model file verifies."""
    previous = _timed_step("promote", lambda: holder.registry.promote(version))
    metrics.LAST_PROMOTION.set(time.time())
    holder.refresh()
    return {"version": version, "previous_version": previous, "promoted": True}


@router.get("/models", response_model=ModelsResponse, summary="List model versions", tags=["models"])
def list_models(holder: HolderDep) -> dict[str, Any]:
    """Every version, oldest first, with its status, key metrics and which one is served."""
    registry = holder.registry
    served = registry.served_version()
    models = []
    for version in registry.versions():
        meta = registry.read_meta(version)
        m = registry.read_metrics(version)
        status = registry.status(version)
        models.append(
            ModelSummary(
                version=version,
                created_at=meta.get("created_at"),
                status=status,
                servable=status == "passed",
                served=version == served,
                metrics={k: float(m[k]) for k in HEADLINE if k in m} if m else None,
            )
        )
    return {"served_version": served, "models": models}


@router.get(
    "/models/current",
    response_model=CurrentModelResponse,
    summary="The served model",
    tags=["models"],
    responses=error_responses(503),
)
async def current_model(holder: HolderDep) -> dict[str, Any]:
    """Version, threshold and held-out metrics of the model answering /predict."""
    model = holder.current
    if model is None:
        raise NoServedModelError()
    return {
        "version": model.version,
        "threshold": model.threshold,
        "created_at": model.created_at,
        "metrics": model.metrics,
    }
