"""GET /models, /models/current and each version's evaluation report: the versions in the registry, the one
being served, and what people read before one may be served. (Serving another version is a pipeline step:
POST /models/{version}/promote in app/routes/pipeline.py.)"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from app.auth import StrictJSONRoute
from app.deps import HolderDep, RecordsDep
from app.errors import error_responses
from app.schemas import CurrentModelResponse, ErrorResponse, ModelsResponse
from app.serving import MODEL_VERSION_HEADER
from etl import pipeline, report

router = APIRouter(route_class=StrictJSONRoute, tags=["models"])

VersionPath = Annotated[str, Path(max_length=64, description="a version from GET /models")]
FigurePath = Annotated[
    str, Path(max_length=32, description=f"the figure: {', '.join(report.FIGURES)}", examples=["roc"])
]
# the report is served as it is written: nothing but its inline styles and data: images may load
REPORT_HEADERS = {
    "Content-Security-Policy": f"{report.CONTENT_SECURITY_POLICY}; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _json_errors(documented: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """``error_responses`` for a route whose 200 is not JSON: FastAPI would document a ``model`` under the
    route's media type (text/html, image/png), so the JSON error bodies are referenced explicitly."""
    return {
        status: {
            "description": entry["description"],
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{entry['model'].__name__}"}}
            },
        }
        for status, entry in documented.items()
    }


REPORT_ERRORS = _json_errors(
    {
        404: {"model": ErrorResponse, "description": "no such version, not evaluated yet, or no such figure"},
        **error_responses(409, 422),
    }
)


def report_url(request: Request, version: str) -> str:
    """The path of a version's report on this service (behind a proxy's root_path too)."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root + request.app.url_path_for("model_report", version=version)


@router.get("/models", response_model=ModelsResponse, summary="List model versions")
def list_models(request: Request, holder: HolderDep) -> dict[str, Any]:
    """Every version, oldest first, with its status, key metrics, which one is served, and its report."""
    listing = pipeline.list_models(holder.registry)
    for model in listing["models"]:
        has = model.pop("has_report")
        model["report_url"] = report_url(request, model["version"]) if has else None
    return listing


@router.get(
    "/models/current",
    response_model=CurrentModelResponse,
    summary="The served model",
    responses=error_responses(503),
)
def current_model(holder: HolderDep, records: RecordsDep, response: Response) -> dict[str, Any]:
    """Version, threshold and held-out metrics of the model answering /predict, and its live quality and
    input drift from the prediction record."""
    model = holder.get()
    response.headers[MODEL_VERSION_HEADER] = model.version
    figures = records.figures(model.version, model.feature_distribution)
    return {
        "version": model.version,
        "threshold": model.threshold,
        "created_at": model.created_at,
        "metrics": model.metrics,
        **(figures.to_dict() if figures else {"live": None, "drift": None}),
    }


@router.get(
    "/models/{version}/report",
    response_class=HTMLResponse,
    summary="A version's evaluation report",
    responses={
        200: {
            "content": {"text/html": {}},
            "description": "report.html: one self-contained page (figures inline), readable offline",
        },
        **REPORT_ERRORS,
    },
)
def model_report(holder: HolderDep, version: VersionPath) -> HTMLResponse:
    """The evaluation report written when the version was evaluated: ROC and precision-recall curves with the
    nested-CV band and the operating point, the threshold sweep, calibration, confusion matrices, the quality
    gate's verdict (beside the served model for a challenger; a rejected version says why at the top) and a
    model card. Every number in it is the one in the version's metrics.json."""
    return HTMLResponse(report.read_report(holder.registry, version), headers=REPORT_HEADERS)


@router.get(
    "/models/{version}/report/{name}.png",
    response_class=Response,
    summary="One figure of a version's evaluation report",
    responses={200: {"content": {"image/png": {}}, "description": "the figure as a PNG"}, **REPORT_ERRORS},
)
def model_report_figure(holder: HolderDep, version: VersionPath, name: FigurePath) -> Response:
    """A figure of the report as its own PNG: roc, pr, threshold, calibration or confusion."""
    return Response(
        report.read_report(holder.registry, version, name), media_type="image/png", headers=REPORT_HEADERS
    )
