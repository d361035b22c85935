"""GET /health, /ready and /metrics: what probes and Prometheus ask."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app import metrics
from app.auth import StrictJSONRoute
from app.deps import HolderDep, require_metrics_token
from app.errors import error_responses
from app.schemas import HealthResponse, ReadyResponse
from app.serving import MODEL_VERSION_HEADER

router = APIRouter(route_class=StrictJSONRoute, tags=["ops"])


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health(holder: HolderDep, response: Response) -> dict[str, str | None]:
    """The process is alive (its readiness is /ready), and which model version it serves, if any (also in
    the ``X-Model-Version`` header, as on every answer a model gave)."""
    model = holder.current
    if model is not None:
        response.headers[MODEL_VERSION_HEADER] = model.version
    return {"status": "ok", "model_version": model.version if model else None}


@router.get("/ready", response_model=ReadyResponse, summary="Readiness", responses=error_responses(503))
async def ready(holder: HolderDep, response: Response) -> dict[str, str]:
    """200 only when a verified model is loaded and serving; 503 otherwise."""
    model = holder.get()
    response.headers[MODEL_VERSION_HEADER] = model.version
    return {"status": "ready", "model_version": model.version}


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_metrics_token)])
def prometheus_metrics() -> Response:
    """Prometheus exposition; needs ``Authorization: Bearer <METRICS_TOKEN>`` when the service sets one."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
