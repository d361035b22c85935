"""The HTTP routes, one module per resource, collected in ``router`` (app.main includes it).

predict: POST /predict, /predict/batch. models: GET /models, /models/current, /models/{version}/report and
its figures. pipeline: POST /train, /evaluate, /upload, /models/{version}/promote, the routes that change
state, on the one token-protected router. ops: GET /health, /ready, /metrics.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.routes import models, ops, pipeline, predict

router = APIRouter()
for _module in (predict, ops, models, pipeline):
    router.include_router(_module.router)
