"""The one place where pipeline errors become HTTP responses: a stable status and a JSON ``detail``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.records.errors import OutcomeConflictError, PredictionNotFoundError
from etl import errors as e

log = logging.getLogger(__name__)

# most specific first: the first isinstance match wins
STATUS_BY_ERROR: tuple[tuple[type[e.EtlError], int], ...] = (
    (e.DataSourceError, 502),
    (e.DataFormatError, 422),
    (e.DataValidationError, 422),
    (e.ModelNotFoundError, 404),
    (e.ReportNotFoundError, 404),
    (e.NoServedModelError, 503),
    (e.ArtifactIntegrityError, 409),
    (e.NotServableError, 409),
    (e.TrainingInProgressError, 409),
    (e.UploadInProgressError, 409),
    (e.LeaseLostError, 409),
    (e.PromotionConflictError, 409),
    (e.StorageError, 502),
    (e.DatabaseUnavailableError, 503),
    (PredictionNotFoundError, 404),
    (OutcomeConflictError, 409),
)


# Refusals of the caller's request before a pipeline step could run: an unknown version, a version that may
# not be served, a training already running. The metrics count them as "rejected", not as a step failure
# (a 404 on promote is not a broken pipeline, and must not fire UploadFailed).
REJECTIONS: tuple[type[e.EtlError], ...] = (
    e.ModelNotFoundError,
    e.NotServableError,
    e.TrainingInProgressError,
    e.UploadInProgressError,
    e.PromotionConflictError,
)


def status_for(exc: e.EtlError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


INTERNAL_ERROR_DETAIL = "internal server error; see the service log"  # a bug: nothing the caller can fix

NO_MODEL_DETAIL = (
    "no model is served yet: train and evaluate one (POST /train, then POST /evaluate), "
    "or run `python -m etl run`"
)


def detail_for(exc: e.EtlError) -> str:
    if isinstance(exc, e.NoServedModelError):
        return NO_MODEL_DETAIL  # etl's message names the CLI; here, the routes too
    if isinstance(exc, e.StorageError):
        backup = f"; the local backup is intact at {exc.backup_dir}" if exc.backup_dir else ""
        return f"upload failed at step '{exc.step}' after {exc.retries} retries: {exc}{backup}"
    return str(exc)


def error_body(exc: e.EtlError) -> dict[str, str]:
    """The JSON body of ``exc``'s error response (for code that answers outside FastAPI: the fast path)."""
    return {"detail": detail_for(exc)}


def error_responses(
    *statuses: int, data_errors: bool = False, text: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer.

    A 422 is a list of field errors (``_validation_error``); with ``data_errors`` (a route that reads a data
    source) it may also be a sentence about the data (``DataFormatError``, ``DataValidationError``).
    ``text`` replaces the description of a status for one route.
    """
    from app.schemas import DataErrorResponse, ErrorResponse, ValidationErrorResponse

    text = {
        401: "missing or wrong bearer token",
        404: "no such model version",
        409: "conflict: a training or upload is running, the version cannot be served, another "
        "promotion moved the served pointer first, or this trainer's lease was taken over",
        413: "request body larger than MAX_BODY_BYTES",
        422: "invalid request, or invalid data" if data_errors else "invalid request",
        502: "an upstream (data source or Google Drive) failed",
        503: "no model is served yet, or a database (the registry's, the prediction record's) is unreachable",
        **(text or {}),
    }
    models = {422: DataErrorResponse if data_errors else ValidationErrorResponse}
    return {s: {"model": models.get(s, ErrorResponse), "description": text.get(s, "error")} for s in statuses}


def _clean_validation_errors(errors: Any) -> list[dict[str, Any]]:
    # echo where and what, never the whole submitted input (it may be large)
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")} for err in errors
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(e.EtlError)
    async def _etl_error(request: Request, exc: e.EtlError) -> JSONResponse:
        status = status_for(exc)
        log.log(
            logging.ERROR if status >= 500 else logging.WARNING,
            "%s %s -> %d: %s",
            request.method,
            request.url.path,
            status,
            exc,
        )
        return JSONResponse({"detail": detail_for(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _clean_validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI answers 400 "There was an error parsing the body" for a body that is not UTF-8; the
            # API documents every unreadable body as a 422, like a JSON syntax error
            msg = "request body could not be parsed as JSON (UTF-8)"
            return JSONResponse({"detail": [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]}, 422)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": INTERNAL_ERROR_DETAIL}, status_code=500)
