"""POST /predict and /predict/batch: the served model's answer (valid requests rarely get here: the fast
path in app/middleware.py answers them first with the same app/serving.py functions)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError

from app.auth import StrictJSONRoute
from app.deps import HolderDep, RecordsDep, SettingsDep
from app.errors import error_responses
from app.schemas import PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse
from app.serving import MODEL_VERSION_HEADER, batch_too_large, predict_many, predict_one

router = APIRouter(route_class=StrictJSONRoute, tags=["predict"])
ERRORS = error_responses(
    413,
    422,
    503,
    text={503: "no model is served yet, or PREDICTION_LOG=sync and the record cannot be written"},
)


@router.post(
    "/predict",
    response_model=PredictResponse,
    status_code=200,
    summary="Predict one tumour",
    responses=ERRORS,
    response_model_exclude_unset=True,  # no prediction_id with PREDICTION_LOG=off
)
async def predict(
    body: PredictRequest, holder: HolderDep, records: RecordsDep, response: Response
) -> dict[str, Any]:
    """Classify one tumour from its nine cytology scores with the served model (research use only)."""
    model = holder.get()
    answer = predict_one(model, body.row(), records)
    await records.save(answer.pending)
    response.headers[MODEL_VERSION_HEADER] = model.version
    return answer.counted()


@router.post(
    "/predict/batch",
    response_model=PredictBatchResponse,
    status_code=200,
    summary="Predict many tumours",
    responses=ERRORS,
    response_model_exclude_unset=True,
)
def predict_batch(
    body: PredictBatchRequest,
    holder: HolderDep,
    settings: SettingsDep,
    records: RecordsDep,
    response: Response,
) -> dict[str, Any]:
    """Classify up to MAX_BATCH tumours in one call; predictions come back in request order."""
    refusal = batch_too_large(len(body.instances), settings.max_batch)
    if refusal:
        raise RequestValidationError([{"loc": ("body", "instances"), "msg": refusal, "type": "too_long"}])
    model = holder.get()
    answer = predict_many(model, np.array([inst.row() for inst in body.instances], dtype=float), records)
    records.save_blocking(answer.pending)
    response.headers[MODEL_VERSION_HEADER] = model.version
    return answer.counted()
