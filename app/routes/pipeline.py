"""The routes that change state, each a pipeline step: POST /train, /evaluate, /upload and
/models/{version}/promote. They share one router whose route class checks API_TOKEN before the body is read
(app/auth.py: TokenRoute) and whose dependency documents the bearer scheme; each counts its outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Body, Path, Query

from app import metrics
from app.auth import token_router
from app.deps import HolderDep, SettingsDep
from app.errors import REJECTIONS, error_responses
from app.schemas import (
    EvaluateRequest,
    EvaluateResponse,
    PromoteResponse,
    TrainRequest,
    TrainResponse,
    UploadRequest,
    UploadResponse,
)
from etl import pipeline
from etl.errors import EtlError, StorageError
from etl.load import check_override_source
from etl.upload_results import upload_to_storage

router = token_router()
T = TypeVar("T")


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


@router.post(
    "/train",
    response_model=TrainResponse,
    status_code=200,
    summary="Train a new model version",
    tags=["pipeline"],
    responses=error_responses(401, 409, 413, 422, 502, data_errors=True),
)
def train(
    settings: SettingsDep, holder: HolderDep, body: Annotated[TrainRequest | None, Body()] = None
) -> dict[str, Any]:
    """Load and validate the data, train, and register a new version (served only after /evaluate)."""
    body = body or TrainRequest()
    data_url = body.data_url
    if data_url:  # an allowed host with public addresses, or a file under DATA_DIR; refused before the lock
        check_override_source(data_url, settings)
    summary = _timed_step(
        "train", lambda: pipeline.train_version(settings, holder.registry, data_url, force=body.force)
    )
    if not summary.unchanged:
        metrics.LAST_TRAINING.set(time.time())
    return summary.to_dict()


@router.post(
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


@router.post(
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
    """Copy model.joblib, metrics.json and report.html to upload/<timestamp>/ and, when configured, to Google
    Drive."""
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


@router.post(
    "/models/{version}/promote",
    response_model=PromoteResponse,
    status_code=200,
    summary="Serve an earlier version (rollback) or a passed one",
    tags=["models"],
    responses=error_responses(401, 404, 409, 422),
)
def promote(
    holder: HolderDep,
    version: Annotated[str, Path(max_length=64, description="a version from GET /models")],
    expected_epoch: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**62,
            description="switch only if the served pointer is still at this epoch (GET /models says it), "
            "else 409; default: the epoch when the request arrives",
        ),
    ] = None,
) -> dict[str, Any]:
    """Serve ``version`` if it passed the quality gate and its model file verifies: a compare-and-swap on
    the served pointer's epoch, so of two racing promotions one wins and the other gets 409. Every replica
    follows within MODEL_POLL_SECONDS."""
    registry = holder.registry
    expected = registry.pointer().epoch if expected_epoch is None else expected_epoch
    previous = _timed_step("promote", lambda: registry.promote(version, expected_epoch=expected))
    metrics.LAST_PROMOTION.set(time.time())
    holder.refresh()
    # the compare-and-swap moved the pointer from exactly `expected`: this promotion's epoch, whatever
    # promotion may have followed it since
    return {"version": version, "previous_version": previous, "promoted": True, "epoch": expected + 1}
