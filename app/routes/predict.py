"""POST /predict and /predict/batch: the served model's answer (valid requests rarely get here: the fast
path in app/middleware.py answers them first with the same app/serving.py functions)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError

from app.auth import StrictJSONRoute
from app.deps import HolderDep, SettingsDep
from app.errors import error_responses
from app.schemas import PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse
from app.serving import MODEL_VERSION_HEADER, batch_too_large, predict_many, predict_one

router = APIRouter(route_class=StrictJSONRoute, tags=["predict"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    status_code=200,
    summary="Predict one tumour",
    responses=error_responses(413, 422, 503),
)
async def predict(body: PredictRequest, holder: HolderDep, response: Response) -> dict[str, Any]:
    """Classify one tumour from its nine cytology scores with the served model (research use only)."""
    model = holder.get()
    response.headers[MODEL_VERSION_HEADER] = model.version
    return predict_one(model, body.row())


@router.post(
    "/predict/batch",
    response_model=PredictBatchResponse,
    status_code=200,
    summary="Predict many tumours",
    responses=error_responses(413, 422, 503),
)
def predict_batch(
    body: PredictBatchRequest, holder: HolderDep, settings: SettingsDep, response: Response
) -> dict[str, Any]:
    """Classify up to MAX_BATCH tumours in one call; predictions come back in request order."""
    refusal = batch_too_large(len(body.instances), settings.max_batch)
    if refusal:
        raise RequestValidationError([{"loc": ("body", "instances"), "msg": refusal, "type": "too_long"}])
    model = holder.get()
    response.headers[MODEL_VERSION_HEADER] = model.version
    return predict_many(model, np.array([inst.row() for inst in body.instances], dtype=float))
