"""The service's three pure ASGI middlewares, outermost first, and the header helpers they share.

- ``HttpMetrics``: the ``http_*`` request metrics (app/metrics.py), labelled by route template.
- ``BodySizeLimit``: a body over MAX_BODY_BYTES gets 413 without being read whole.
- ``PredictFastPath``: valid POST /predict and /predict/batch answered before routing.

They are plain ASGI (no ``BaseHTTPMiddleware``, no Request object) because they run on every /predict: the
fast path exists to take FastAPI's several hundred microseconds off a request whose model costs three.

The fast path: FastAPI's routes (app/routes/predict.py) document, validate and answer /predict and
/predict/batch. ``PredictFastPath`` answers the *valid* requests of those two routes first, with the same
pydantic models (``model_validate_json``) and the same response bodies (app/serving.py builds them for
both). JSON parsers let the last of two equal keys win; the routes refuse a duplicate key (app/auth.py), so
the fast path answers only bodies with exactly one key per field: in a valid body every JSON string is a
key (the values are integers, other keys are refused), so it holds exactly two unescaped quotes per key,
which ``bytes.count`` checks in well under a microsecond. Anything else (invalid input, a duplicate key, a
content type other than ``application/json``, too many instances, no served model) is replayed, byte for
byte, to the FastAPI route, so every error response (422 naming the field and instance index, 503, ...)
comes from one place. One error is answered here, with the body app/errors.py gives it: the 503 of
PREDICTION_LOG=sync when the prediction record cannot be written (replaying would try the database
twice). It sits inside the body-size limit and the instrumentation, so those see fast-path requests exactly
as they see the others. All three sit outside FastAPI's own layers (app/main.py: ``ServiceApp``), so the fast
path answers an unexpected error itself: 500 with the body of app/errors.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from prometheus_fastapi_instrumentator.routing import get_route_name
from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import errors, metrics
from app.records.service import PredictionRecords
from app.schemas import PredictBatchRequest, PredictRequest
from app.serving import ModelHolder, ServedModel, batch_too_large, predict_many, predict_one
from etl.errors import DatabaseUnavailableError
from etl.features import FEATURE_MAX, FEATURE_MIN, FEATURE_NAMES

log = logging.getLogger(__name__)

Headers = Iterable[tuple[bytes, bytes]]
_JSON = b"application/json"


# --- headers (ASGI header names are lower case) ------------------------------------------------


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of the header ``name`` (lower case), or None when there is none."""
    for key, value in headers:
        if key == name:
            return value
    return None


def content_length(headers: Headers) -> int | None:
    """The Content-Length: None when absent, -1 when it is not a plain decimal number."""
    value = header(headers, b"content-length")
    if value is None:
        return None
    return int(value) if value.isdigit() else -1


def is_json(headers: Headers, *, suffixed: bool = True) -> bool:
    """The Content-Type is ``application/json`` or, with ``suffixed``, ``application/*+json`` (FastAPI
    parses both as JSON)."""
    value = header(headers, b"content-type")
    if value is None:
        return False
    media = value.partition(b";")[0].strip().lower()
    return media == _JSON or (suffixed and media.startswith(b"application/") and media.endswith(b"+json"))


# --- BodySizeLimit ------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, without reading them whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        declared = content_length(headers)
        if declared is not None and not 0 <= declared <= self.max_bytes:
            await self._reject(send)
            return
        if declared is not None and header(headers, b"transfer-encoding") is None:
            # the HTTP server delimits the body by its Content-Length (what follows is the next request): it
            # cannot pass the limit, so nothing needs counting (two wrappers less on every /predict)
            await self.app(scope, receive, send)
            return
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # answer 413 here: FastAPI turns any error raised while it reads the body into a 400,
                    # which guarded_send then drops
                    if not rejected:
                        rejected = True
                        await self._reject(send)
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not rejected:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = b'{"detail":"request body is larger than MAX_BODY_BYTES=%d bytes"}' % self.max_bytes
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", _JSON), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --- HttpMetrics --------------------------------------------------------------------------------

_CACHEABLE_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Records the ``http_*`` metrics, labelled by route template.

    The families of prometheus-fastapi-instrumentator's default instrumentation, whose own middleware cost
    ~60% of a /predict request (a Request, a walk over every route, a Response object and five label
    lookups per request). Like it (``should_ignore_untemplated``, ``excluded_handlers``): requests that
    match no route, and the excluded handlers (/metrics), are not recorded; an exception counts as 500.
    """

    def __init__(self, app: ASGIApp, excluded_handlers: tuple[str, ...] = ("/metrics",)) -> None:
        self.app = app
        self.excluded = frozenset(excluded_handlers)
        self._routes: dict[tuple[str, str], metrics.RouteMetrics | None] = {}

    def _route_metrics(self, scope: Scope) -> metrics.RouteMetrics | None:
        method, path = scope["method"], scope["path"]
        key = (method, path)
        found = self._routes.get(key, False)
        if found is not False:
            return found  # type: ignore[return-value]
        handler = get_route_name(HTTPConnection(scope), should_include_root_path=False)
        route = None if handler is None or handler in self.excluded else metrics.RouteMetrics(method, handler)
        # cache static paths only (a path with parameters, or an unknown one, would grow the dict unbounded)
        if handler is not None and handler == path and method in _CACHEABLE_METHODS:
            self._routes[key] = route
        return route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route_metrics(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        status = 500
        response_size = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_size
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_size = max(content_length(message.get("headers", ())) or 0, 0)
            await send(message)

        start = time.perf_counter()
        route.inprogress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            duration = max(time.perf_counter() - start, 0.0)
            route.inprogress.dec()
            request_size = max(content_length(scope["headers"]) or 0, 0)
            route.record(status, duration, request_size, response_size)


# --- PredictFastPath ----------------------------------------------------------------------------

_PREDICT = "/predict"
_INTERNAL_ERROR = orjson.dumps({"detail": errors.INTERNAL_ERROR_DETAIL})
_PREDICT_BATCH = "/predict/batch"
_features_of = itemgetter(*FEATURE_NAMES)
_QUOTES_PER_ROW = 2 * len(FEATURE_NAMES)  # the quotes of the nine keys of one valid instance


def _one_key_each(body: bytes, rows: int, wrapped: bool) -> bool:
    """A valid body of ``rows`` instances has no repeated key (see the module docstring)."""
    return body.count(b'"') == rows * _QUOTES_PER_ROW + (2 if wrapped else 0)


def plain_batch_rows(data: Any) -> np.ndarray | None:
    """Rows of a parsed batch body as an (n, 9) array when it is plainly valid, else None.

    Plainly valid: ``{"instances": [...]}`` with one or more objects that each have exactly the nine
    snake_case keys with JSON integers in range. That is a subset of what ``PredictBatchRequest`` accepts
    (it also takes the CSV column names), checked without building a pydantic model per row.
    """
    if type(data) is not dict or len(data) != 1:
        return None
    instances = data.get("instances")
    if type(instances) is not list or not instances:
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
    """Answers valid POST /predict and /predict/batch without FastAPI routing (see the module docstring)."""

    def __init__(self, app: ASGIApp, holder: ModelHolder, max_batch: int, records: PredictionRecords) -> None:
        self.app = app
        self.holder = holder
        self.max_batch = max_batch
        self.records = records

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
        # application/*+json goes to the route too (FastAPI parses it; the tests use it to reach the route)
        if model is None or not is_json(scope["headers"], suffixed=False):
            await self.app(scope, receive, send)  # the route answers: 503, or its own content handling
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        status = 200
        try:
            payload = await answer(model, body)
        except DatabaseUnavailableError as exc:  # PREDICTION_LOG=sync without its database
            status, payload = errors.status_for(exc), orjson.dumps(errors.error_body(exc))
        except Exception:  # a bug: outside FastAPI's error layer (app/main.py), so its 500 is answered here
            log.exception("unhandled error on POST %s", path)
            status, payload = 500, _INTERNAL_ERROR
        if payload is None:
            await self.app(scope, _replay(body, receive), send)
            return
        headers = [(b"content-length", b"%d" % len(payload)), (b"content-type", _JSON)]
        if status == 200:  # the model answered: say which version (the header is encoded once per model)
            headers.append(model.version_header)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _single(self, model: ServedModel, body: bytes) -> bytes | None:
        try:
            request = PredictRequest.model_validate_json(body)
        except ValidationError:
            return None
        if not _one_key_each(body, 1, wrapped=False):
            return None
        answer = predict_one(model, request.row(), self.records)
        await self.records.save(answer.pending)
        return orjson.dumps(answer.counted())

    async def _batch(self, model: ServedModel, body: bytes) -> bytes | None:
        try:
            X = plain_batch_rows(orjson.loads(body))
        except orjson.JSONDecodeError:
            return None
        if X is None:  # maybe the CSV column names: the pydantic model decides, errors go to the route
            try:
                request = PredictBatchRequest.model_validate_json(body)
            except ValidationError:
                return None
            X = np.array([inst.row() for inst in request.instances], dtype=np.float64)
        if batch_too_large(len(X), self.max_batch) or not _one_key_each(body, len(X), wrapped=True):
            return None
        answer = predict_many(model, X, self.records)
        await self.records.save(answer.pending)
        return orjson.dumps(answer.counted())


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
