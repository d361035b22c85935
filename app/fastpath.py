"""The prediction hot path: one response builder shared by the FastAPI routes and a pure ASGI fast path.

``POST /predict`` and ``POST /predict/batch`` are documented, validated and answered by the FastAPI routes in
app/routes.py. Going through FastAPI costs several hundred microseconds a request (dependency resolution,
validating the returned dict against the response model, JSON encoding), which is most of the time of a
3-microsecond dot product. ``PredictFastPath`` answers the *valid* requests of those two routes before
routing, with the same pydantic models (``model_validate_json``) and the same response bodies (built
here, by the functions the routes call too). JSON parsers let the last of two equal keys win; the routes
refuse a duplicate key (app/auth.py), so the fast path answers only bodies with exactly one key per field:
in a valid body every JSON string is a key (the values are integers, other keys are refused), so it holds
exactly two unescaped quotes per key, which ``bytes.count`` checks in well under a microsecond. Anything
else (invalid input, a duplicate key, a content type other than JSON, no served model) is replayed, byte
for byte, to the FastAPI route, so every error response (422 naming the field and instance index, 503,
...) comes from one place. The middleware sits inside the
body-size limit and the Prometheus instrumentation, so those see fast-path requests exactly as before.
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.schemas import PredictBatchRequest, PredictRequest
from app.state import ModelHolder, ServedModel
from etl.features import FEATURE_MAX, FEATURE_MIN, FEATURE_NAMES, LABELS

_PREDICT = "/predict"
_PREDICT_BATCH = "/predict/batch"
_JSON = b"application/json"
_features_of = itemgetter(*FEATURE_NAMES)
_QUOTES_PER_ROW = 2 * len(FEATURE_NAMES)  # the quotes of the nine keys of one valid instance


def _one_key_each(body: bytes, rows: int, wrapped: bool) -> bool:
    """A valid body of ``rows`` instances has no repeated key (see the module docstring)."""
    return body.count(b'"') == rows * _QUOTES_PER_ROW + (2 if wrapped else 0)


def predict_one(model: ServedModel, row: tuple[int, ...]) -> dict[str, Any]:
    """The /predict response body for one row of the nine features (model column order)."""
    p = model.scorer.proba_one(row)
    cls = 1 if p >= model.threshold else 0
    metrics.record_predictions([p], [cls])
    return {
        "label": LABELS[cls],
        "class": cls,
        "probability_malignant": p,
        "threshold": model.threshold,
        "model_version": model.version,
    }


def predict_many(model: ServedModel, X: np.ndarray) -> dict[str, Any]:
    """The /predict/batch response body for an (n, 9) float array, predictions in row order."""
    probs = model.scorer.proba(X)
    malignant = probs >= model.threshold
    metrics.BATCH_ROWS.observe(len(probs))
    metrics.record_predictions(probs, malignant)
    p_list, classes = probs.tolist(), malignant.astype(np.int8).tolist()
    labels = LABELS
    return {
        "model_version": model.version,
        "threshold": model.threshold,
        "predictions": [
            {"label": labels[c], "class": c, "probability_malignant": p}
            for p, c in zip(p_list, classes, strict=True)
        ],
    }


def plain_batch_rows(data: Any, max_batch: int) -> np.ndarray | None:
    """Rows of a parsed batch body as an (n, 9) array when it is plainly valid, else None.

    Plainly valid: ``{"instances": [...]}`` with 1..max_batch objects that each have exactly the nine
    snake_case keys with JSON integers in range. That is a subset of what ``PredictBatchRequest`` accepts
    (it also takes the CSV column names), checked without building a pydantic model per row.
    """
    if type(data) is not dict or len(data) != 1:
        return None
    instances = data.get("instances")
    if type(instances) is not list or not 0 < len(instances) <= max_batch:
        return None
    try:
        rows = list(map(_features_of, instances))  # KeyError: a key missing; TypeError: not an object
    except (KeyError, TypeError):
        return None
    if any(type(inst) is not dict or len(inst) != len(FEATURE_NAMES) for inst in instances):
        return None  # an extra key (extra="forbid"), or a sequence that happened to index
    if set(map(type, chain.from_iterable(rows))) != {int}:
        return None  # bool, float, str, null: strict ints only
    try:
        X = np.array(rows, dtype=np.float64)
    except OverflowError:
        return None
    if X.min() < FEATURE_MIN or X.max() > FEATURE_MAX:
        return None
    return X


class PredictFastPath:
    """Pure ASGI middleware answering valid POST /predict and /predict/batch without FastAPI routing."""

    def __init__(self, app: ASGIApp, holder: ModelHolder, max_batch: int) -> None:
        self.app = app
        self.holder = holder
        self.max_batch = max_batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == _PREDICT:
            answer = self._single
        elif path == _PREDICT_BATCH:
            answer = self._batch
        else:
            await self.app(scope, receive, send)
            return
        model = self.holder.current
        if model is None or not _is_json(scope["headers"]):
            await self.app(scope, receive, send)  # the route answers: 503, or its own content handling
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        payload = answer(model, body)
        if payload is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(payload)), (b"content-type", _JSON)],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _single(self, model: ServedModel, body: bytes) -> bytes | None:
        try:
            request = PredictRequest.model_validate_json(body)
        except ValidationError:
            return None
        if not _one_key_each(body, 1, wrapped=False):
            return None
        return orjson.dumps(predict_one(model, request.row()))

    def _batch(self, model: ServedModel, body: bytes) -> bytes | None:
        try:
            X = plain_batch_rows(orjson.loads(body), self.max_batch)
        except orjson.JSONDecodeError:
            return None
        if X is None:  # maybe the CSV column names: the pydantic model decides, errors go to the route
            try:
                request = PredictBatchRequest.model_validate_json(body)
            except ValidationError:
                return None
            if len(request.instances) > self.max_batch:
                return None
            X = np.array([inst.row() for inst in request.instances], dtype=np.float64)
        if not _one_key_each(body, len(X), wrapped=True):
            return None
        return orjson.dumps(predict_many(model, X))


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.partition(b";")[0].strip().lower() == _JSON
    return False


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the route, then listens to the client again."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
