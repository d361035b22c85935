"""POST /feedback and GET /predictions/{prediction_id}: outcomes reported back into the prediction record,
and one record read back. Token routes (app/auth.py: TokenRoute): the record holds what was asked and
answered, and an outcome changes the live figures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, Path
from fastapi.exceptions import RequestValidationError

from app.auth import token_router
from app.deps import RecordsDep, SettingsDep
from app.errors import error_responses
from app.records.ids import PATTERN as ID_PATTERN
from app.records.store import OutcomeReport, RecordedOutcome
from app.schemas import FeedbackRequest, FeedbackResponse, PredictionRecordResponse
from app.serving import batch_too_large
from etl.features import FEATURE_NAMES, LABELS

router = token_router(tags=["records"])

NOT_FOUND = "no prediction on record with that id (never made, made with PREDICTION_LOG=off, or purged)"


def _answer(outcome: RecordedOutcome) -> dict[str, Any]:
    return {
        "prediction_id": outcome.prediction_id,
        "actual_class": outcome.actual_class,
        "actual_label": LABELS[outcome.actual_class],
        "predicted_class": outcome.predicted_class,
        "correct": outcome.predicted_class == outcome.actual_class,
        "model_version": outcome.model_version,
        "reported_at": outcome.reported_at,
    }


def _reports(items: list[FeedbackRequest]) -> list[OutcomeReport]:
    """The reports of a request; two of one id must agree (422 naming the second)."""
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        known = first.setdefault(item.prediction_id, item.actual_class)
        if known != item.actual_class:
            msg = "this prediction_id is reported earlier in the request with another actual_class"
            raise RequestValidationError(
                [{"loc": ("body", index, "actual_class"), "msg": msg, "type": "conflict"}]
            )
    return [OutcomeReport(item.prediction_id, item.actual_class, item.replace) for item in items]


@router.post(
    "/feedback",
    response_model=FeedbackResponse | list[FeedbackResponse],
    status_code=200,
    summary="Report confirmed diagnoses (outcomes) of earlier predictions",
    responses=error_responses(
        401,
        404,
        409,
        413,
        422,
        503,
        text={
            404: NOT_FOUND + "; nothing is recorded",
            409: "another outcome is on record and replace is not true; nothing is recorded",
            503: "the prediction record database is unavailable",
        },
    ),
)
def feedback(
    records: RecordsDep,
    settings: SettingsDep,
    body: Annotated[FeedbackRequest | list[FeedbackRequest], Body()],
) -> dict[str, Any] | list[dict[str, Any]]:
    """Record the outcome of one prediction, or of a list of them (all or none): the same report again
    gets the same answer; a different one needs ``replace``."""
    asked_at = datetime.now(UTC)
    items = body if isinstance(body, list) else [body]
    refusal = "at least one outcome" if not items else batch_too_large(len(items), settings.max_batch)
    if refusal:
        raise RequestValidationError([{"loc": ("body",), "msg": refusal, "type": "too_long"}])
    reports = _reports(items)
    records.require([r.prediction_id for r in reports], asked_at)
    recorded = records.store.report(reports, datetime.now(UTC))
    answers = [_answer(outcome) for outcome in recorded]
    return answers if isinstance(body, list) else answers[0]


@router.get(
    "/predictions/{prediction_id}",
    response_model=PredictionRecordResponse,
    summary="One prediction as recorded, with its outcome",
    responses=error_responses(401, 404, 422, 503, text={404: NOT_FOUND, 503: "the database is unavailable"}),
)
def prediction_record(
    records: RecordsDep,
    prediction_id: Annotated[
        str,
        Path(pattern=ID_PATTERN, max_length=40, description="an id from a /predict or /predict/batch answer"),
    ],
) -> dict[str, Any]:
    """When it was made, by which model version, the nine scores, the answer, and the outcome history."""
    record = records.get(prediction_id)
    history = record["history"]
    return {
        "prediction_id": record["id"],
        "created_at": record["created_at"],
        "model_version": record["model_version"],
        "threshold": record["threshold"],
        "probability_malignant": record["probability_malignant"],
        "class": record["predicted_class"],
        "label": LABELS[record["predicted_class"]],
        "features": {name: record[name] for name in FEATURE_NAMES},
        "outcome": history[-1] if history else None,
        "history": history,
    }
