"""Request and response models: the contract users read on the Swagger page."""

from __future__ import annotations

from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from app.records.ids import MAX_LENGTH as ID_MAX_LENGTH
from app.records.ids import MIN_LENGTH as ID_MIN_LENGTH
from app.records.ids import PATTERN as ID_PATTERN
from etl.errors import DataSourceNotAllowedError
from etl.features import FEATURE_MAX, FEATURE_MIN, FEATURE_NAMES, FEATURES
from etl.source import MAX_SOURCE_LENGTH, parse_source

# Real rows of the dataset (Id 1000025, benign; Id 1017122, malignant), used as Swagger examples.
BENIGN_EXAMPLE: JsonDict = dict(zip(FEATURE_NAMES, (5, 1, 1, 1, 2, 1, 3, 1, 1), strict=True))
MALIGNANT_EXAMPLE: JsonDict = dict(zip(FEATURE_NAMES, (8, 10, 10, 8, 7, 10, 9, 7, 1), strict=True))

Score = Annotated[int, Field(ge=FEATURE_MIN, le=FEATURE_MAX, strict=True)]


def _feature(snake: str, csv_name: str, description: str) -> Any:
    return Field(
        ...,
        validation_alias=AliasChoices(snake, csv_name),
        description=f"{description}, scored {FEATURE_MIN}-{FEATURE_MAX} (or CSV name `{csv_name}`)",
    )


class PredictRequest(BaseModel):
    """One tumour's nine cytology scores."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [BENIGN_EXAMPLE, MALIGNANT_EXAMPLE]},
    )

    clump_thickness: Score = _feature(*FEATURES[0])
    cell_size_uniformity: Score = _feature(*FEATURES[1])
    cell_shape_uniformity: Score = _feature(*FEATURES[2])
    marginal_adhesion: Score = _feature(*FEATURES[3])
    epithelial_cell_size: Score = _feature(*FEATURES[4])
    bare_nuclei: Score = _feature(*FEATURES[5])
    bland_chromatin: Score = _feature(*FEATURES[6])
    normal_nucleoli: Score = _feature(*FEATURES[7])
    mitoses: Score = _feature(*FEATURES[8])

    def row(self) -> tuple[int, ...]:
        """The nine scores in the model's column order (etl/features.py)."""
        return _row(self)


_row = attrgetter(*FEATURE_NAMES)
if tuple(PredictRequest.model_fields) != FEATURE_NAMES:  # the fields above are typed by hand
    raise RuntimeError("PredictRequest's fields must be etl.features.FEATURE_NAMES, in that order")


PREDICTION_ID_DESCRIPTION = (
    "the prediction's id in the prediction record (for POST /feedback and GET /predictions/{id}); "
    "absent when the service runs with PREDICTION_LOG=off and records nothing"
)
PredictionId = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        min_length=ID_MIN_LENGTH,
        max_length=ID_MAX_LENGTH,
        description="an id from a /predict or /predict/batch answer",
        examples=["9f86d081884c7d65-000000002a"],
    ),
]


class Prediction(BaseModel):
    prediction_id: str | None = Field(None, description=PREDICTION_ID_DESCRIPTION)
    label: Literal["benign", "malignant"] = Field(..., description="predicted class name")
    class_: Literal[0, 1] = Field(..., alias="class", description="0 benign, 1 malignant")
    probability_malignant: float = Field(..., ge=0.0, le=1.0, description="P(malignant) from the model")

    model_config = ConfigDict(populate_by_name=True)


class PredictResponse(Prediction):
    threshold: float = Field(..., description="malignant when probability_malignant >= threshold")
    model_version: str = Field(..., description="the model version that answered")

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "prediction_id": "9f86d081884c7d65-000000002a",
                    "label": "malignant",
                    "class": 1,
                    "probability_malignant": 0.9993,
                    "threshold": 0.2203,
                    "model_version": "20250611T210512Z-1a2b3c4d",
                }
            ]
        },
    )


class PredictBatchRequest(BaseModel):
    """Many tumours at once (at most MAX_BATCH)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"instances": [BENIGN_EXAMPLE, MALIGNANT_EXAMPLE]}]},
    )

    instances: list[PredictRequest] = Field(..., min_length=1, description="one object per tumour")


class PredictBatchResponse(BaseModel):
    model_version: str
    threshold: float
    predictions: list[Prediction] = Field(..., description="one per instance, in request order")


class TrainRequest(BaseModel):
    # examples Swagger users can send as they are: both train on DATA_URL (a URL needs the network, and a
    # path must lie under DATA_DIR, so neither makes an example that works everywhere)
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{}, {"data_url": None}, {"force": True}]},
    )

    data_url: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_SOURCE_LENGTH,
        description="override DATA_URL for this run: an http(s) URL on a host in DATA_URL_ALLOWED_HOSTS "
        "(default: DATA_URL's host) that resolves to public addresses, or a path under DATA_DIR; "
        "null: DATA_URL",
    )
    force: bool = Field(
        False,
        description="train even when a version from the same data, settings and libraries exists "
        "(otherwise that version is returned with unchanged: true)",
    )

    @field_validator("data_url")
    @classmethod
    def _valid_source(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_source(value)
            except DataSourceNotAllowedError as exc:
                raise ValueError(str(exc)) from None
        return value


class RowCountsModel(BaseModel):
    raw: int
    missing_dropped: int
    duplicates_dropped: int
    clean: int
    reference_excluded: int = Field(..., description="rows of reference-set patients, never trained on")
    train: int
    test: int


class TrainResponse(BaseModel):
    version: str = Field(
        ..., description="the new model version (not served until it passes evaluation), or the existing one"
    )
    unchanged: bool = Field(
        ..., description="true: same data, settings and libraries as `version`; nothing was trained"
    )
    data_sha256: str
    data_source: str
    rows: RowCountsModel
    threshold: float
    calibration: Literal["isotonic", "sigmoid", "none"] = Field(..., description="probability calibration")
    nested: dict[str, Any] = Field(
        ...,
        description="nested cross-validation over every training patient: per metric mean, std and 95% "
        "interval; missed cancers and false alarms with Wilson intervals (docs/model.md)",
    )
    duration_seconds: float


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{}, {"version": None, "promote": True}]}
    )

    version: str | None = Field(None, max_length=64, description="version to evaluate; default the newest")
    promote: bool = Field(True, description="serve the version if it passes the quality gate")


class GateCheckModel(BaseModel):
    name: str = Field(..., description="recall, precision, roc_auc (nested), reference_*, *_vs_served, ...")
    value: float = Field(..., description="the figure judged (a p-value for the paired tests)")
    limit: float
    passed: bool
    basis: str = Field(..., description="what the figure rests on: which rows, how many, which models")
    interval: list[float] | None = Field(None, description="its 95% interval, when it has one")
    comparator: Literal[">=", "<="] = Field(..., description="passes when value <comparator> limit")
    detail: str = Field("", description="the counts behind the figure")


class GateModel(BaseModel):
    passed: bool
    checks: list[GateCheckModel]
    reasons: list[str] = Field(..., description="one line per failed check")
    notes: list[str] = Field(
        default_factory=list,
        description="facts shown with the verdict that decide nothing (data changed, ...)",
    )


class EvaluateResponse(BaseModel):
    version: str
    metrics: dict[str, Any] = Field(..., description="the version's metrics.json")
    gate: GateModel
    promoted: bool
    served_version: str | None
    duration_seconds: float


class UploadRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{}, {"version": None}]}
    )

    version: str | None = Field(None, max_length=64, description="version to upload; default the served one")


class UploadResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str
    timestamp: str = Field(
        ..., description="UTC YYYYMMDD_HHMMSS, the backup folder's and Drive folder's name"
    )
    backup_dir: str
    files: list[Any]
    drive: dict[str, Any] = Field(..., description="status uploaded or skipped, folder and file ids")


class PromoteResponse(BaseModel):
    version: str
    previous_version: str | None
    promoted: bool
    epoch: int = Field(..., description="the served pointer's epoch after this promotion")


class ModelSummary(BaseModel):
    version: str
    created_at: str | None
    status: Literal["trained", "passed", "rejected"] = Field(
        ..., description="trained: not evaluated; passed/rejected: quality-gate verdict"
    )
    servable: bool
    served: bool
    metrics: dict[str, float] | None
    report_url: str | None = Field(
        None, description="its evaluation report (GET /models/{version}/report); null until it is evaluated"
    )


class ModelsResponse(BaseModel):
    served_version: str | None
    epoch: int = Field(
        ..., description="the served pointer's epoch: it rises by one at each promotion (expected_epoch)"
    )
    models: list[ModelSummary]


class LiveQualityModel(BaseModel):
    window: int = Field(
        ..., description="LIVE_WINDOW: the newest labelled predictions of the version counted"
    )
    labelled: int = Field(..., description="labelled predictions of the served version in the window")
    min_labelled: int = Field(..., description="LIVE_MIN_LABELLED: the ratios are null below it")
    counts: dict[Literal["tp", "fp", "tn", "fn"], int] = Field(
        ..., description="outcomes against answers in the window (malignant is positive)"
    )
    accuracy: float | None
    recall: float | None = Field(..., description="share of malignant outcomes answered malignant")
    precision: float | None
    specificity: float | None


class DriftModel(BaseModel):
    window: int = Field(..., description="DRIFT_WINDOW: the newest predictions compared")
    predictions: int = Field(..., description="predictions in the window")
    min_predictions: int = Field(..., description="DRIFT_MIN_PREDICTIONS: psi is null below it")
    psi: dict[str, float] | None = Field(
        ...,
        description="population stability index of each feature against the version's training rows (above "
        "0.2: a significant shift); null below min_predictions or for a version trained without a recorded "
        "distribution",
    )


class CurrentModelResponse(BaseModel):
    version: str
    threshold: float
    created_at: str | None
    metrics: dict[str, Any]
    live: LiveQualityModel | None = Field(
        None,
        description="quality against reported outcomes (POST /feedback); null when the prediction record "
        "cannot be read",
    )
    drift: DriftModel | None = Field(None, description="input drift; null when the record cannot be read")


class FeedbackRequest(BaseModel):
    """The confirmed diagnosis of one earlier prediction."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"prediction_id": "9f86d081884c7d65-000000002a", "actual_class": 1},
                {"prediction_id": "9f86d081884c7d65-000000002a", "actual_class": 0, "replace": True},
            ]
        },
    )

    prediction_id: PredictionId
    actual_class: int = Field(
        ..., ge=0, le=1, strict=True, description="the confirmed diagnosis: 0 benign, 1 malignant"
    )
    replace: bool = Field(
        False,
        description="replace a different outcome already on record (the old one stays in its history); "
        "without it a conflicting report is a 409",
    )


class FeedbackResponse(BaseModel):
    """The outcome on record; a repeated identical report gets the same answer."""

    prediction_id: str
    actual_class: Literal[0, 1]
    actual_label: Literal["benign", "malignant"]
    predicted_class: Literal[0, 1] = Field(..., description="what the service answered")
    correct: bool = Field(..., description="the answer matched the outcome")
    model_version: str = Field(..., description="the version that answered")
    reported_at: datetime = Field(..., description="when this outcome was recorded (UTC)")


class OutcomeModel(BaseModel):
    actual_class: Literal[0, 1]
    reported_at: datetime


class PredictionRecordResponse(BaseModel):
    """One prediction as recorded: when, which model, the inputs, the answer, and its outcome."""

    prediction_id: str
    created_at: datetime = Field(..., description="when the answer was made (UTC)")
    model_version: str
    threshold: float
    probability_malignant: float
    class_: Literal[0, 1] = Field(..., alias="class", description="the answer: 0 benign, 1 malignant")
    label: Literal["benign", "malignant"]
    features: dict[str, int] = Field(..., description="the nine scores as received (snake_case names)")
    outcome: OutcomeModel | None = Field(..., description="the outcome on record, null until reported")
    history: list[OutcomeModel] = Field(
        ..., description="every accepted outcome report, oldest first (the last is the outcome on record)"
    )

    model_config = ConfigDict(populate_by_name=True)


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model_version: str | None = Field(..., description="the version this process serves; null before one")


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    model_version: str


class ErrorResponse(BaseModel):
    detail: str = Field(..., description="what was wrong, in words")


class FieldError(BaseModel):
    loc: list[str | int] = Field(
        ..., description='where: "body" (or "path"), then the field and, in a batch, the instance index'
    )
    msg: str = Field(..., description="what is wrong with the value")
    type: str = Field(..., description="the kind of error, e.g. missing, int_type, less_than_equal")


class ValidationErrorResponse(BaseModel):
    """A 422 for a request the schema refuses: one entry per wrong field."""

    detail: list[FieldError]


class DataErrorResponse(BaseModel):
    """A 422 of POST /train: a request the schema refuses, or data that is not a valid dataset."""

    detail: list[FieldError] | str = Field(
        ..., description="field errors for the request; a sentence for the data source or its contents"
    )
