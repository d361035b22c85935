"""GET /models and /models/current: the versions in the registry and the one being served. (Serving another
version is a pipeline step: POST /models/{version}/promote in app/routes/pipeline.py.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.auth import StrictJSONRoute
from app.deps import HolderDep, RecordsDep
from app.errors import error_responses
from app.schemas import CurrentModelResponse, ModelsResponse
from etl import pipeline

router = APIRouter(route_class=StrictJSONRoute, tags=["models"])


@router.get("/models", response_model=ModelsResponse, summary="List model versions")
def list_models(holder: HolderDep) -> dict[str, Any]:
    """Every version, oldest first, with its status, key metrics and which one is served."""
    return pipeline.list_models(holder.registry)


@router.get(
    "/models/current",
    response_model=CurrentModelResponse,
    summary="The served model",
    responses=error_responses(503),
)
def current_model(holder: HolderDep, records: RecordsDep) -> dict[str, Any]:
    """Version, threshold and held-out metrics of the model answering /predict, and its live quality and
    input drift from the prediction record."""
    model = holder.get()
    figures = records.figures(model.version, model.feature_distribution)
    return {
        "version": model.version,
        "threshold": model.threshold,
        "created_at": model.created_at,
        "metrics": model.metrics,
        **(figures.to_dict() if figures else {"live": None, "drift": None}),
    }
