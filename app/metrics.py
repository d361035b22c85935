"""Every Prometheus metric the service exports, declared in one place, and the exposition for GET /metrics.

Works with several uvicorn workers: when PROMETHEUS_MULTIPROC_DIR is set (``python -m app`` sets it up when
WORKERS > 1) prometheus_client writes each worker's values to files and a scrape aggregates them. Gauges
that describe the served model use ``mostrecent`` so every worker's latest value wins, not their sum.
``bcd_model_info`` is not in those files: a file keeps every label value ever set (prometheus_client cannot
remove a series in multiprocess mode), so it is built at scrape time from the version the answering
worker serves, and there is only ever the one series. The live quality and input drift of the served
version are read at scrape time too, from the prediction record's database (``LiveFiguresCollector``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from etl.evaluate import HEADLINE
from etl.monitoring import QUALITY_METRICS

if TYPE_CHECKING:
    from app.records.live import LiveFigures

NAMESPACE = "bcd"
# request latency buckets that resolve a 1-2 ms endpoint as well as a 30 s training
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
STEPS = ("train", "evaluate", "promote", "upload")
# success; failure: the step ran and failed; rejected: the request was refused before the step ran
# (unknown version, not servable, a training already running: app.errors.REJECTIONS)
OUTCOMES = ("success", "failure", "rejected")


class ServedModelInfo(Collector):
    """``bcd_model_info{version}``: 1 on the version this process serves, and no other series."""

    def __init__(self) -> None:
        self.version: str | None = None

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        if self.version is not None:
            family.add_metric([self.version], 1.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{NAMESPACE}_model_info",
            "The served model version (value 1 on the served version's label)",
            labels=["version"],
        )


MODEL_INFO = ServedModelInfo()
REGISTRY.register(MODEL_INFO)
MODEL_QUALITY = Gauge(
    "model_quality_ratio",
    "Held-out quality of the served model",
    ["metric"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
MODEL_THRESHOLD = Gauge(
    "model_threshold_ratio",
    "Decision threshold of the served model (P(malignant) >= threshold means malignant)",
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
PREDICTIONS = Counter("predictions", "Predictions served, by predicted label", ["label"], namespace=NAMESPACE)
PREDICTION_PROBABILITY = Histogram(
    "prediction_probability",
    "Predicted probability of malignancy (its distribution is a drift signal)",
    namespace=NAMESPACE,
    buckets=tuple(i / 20 for i in range(1, 21)),
)
BATCH_ROWS = Histogram(
    "predict_batch_rows",
    "Rows per /predict/batch request",
    namespace=NAMESPACE,
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000),
)
STEP_DURATION = Histogram(
    "pipeline_step_duration_seconds",
    "Duration of pipeline steps run through the service",
    ["step"],
    namespace=NAMESPACE,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
STEP_OUTCOMES = Counter(
    "pipeline_steps",
    "Pipeline steps run through the service, by outcome (success, failure, rejected: refused before it ran)",
    ["step", "outcome"],
    namespace=NAMESPACE,
)
GATE_FAILURES = Counter("quality_gate_failures", "Evaluations whose quality gate failed", namespace=NAMESPACE)
DRIVE_RETRIES = Counter("drive_upload_retries", "Retries taken by Google Drive uploads", namespace=NAMESPACE)
DRIVE_FAILURES = Counter(
    "drive_upload_failures", "Google Drive uploads that failed after all retries", namespace=NAMESPACE
)
LAST_TRAINING = Gauge(
    "last_training_success_timestamp_seconds",
    "Unix time of the last successful training",
    namespace=NAMESPACE,
    multiprocess_mode="max",
)
LAST_PROMOTION = Gauge(
    "last_promotion_timestamp_seconds",
    "Unix time of the last promotion (or rollback)",
    namespace=NAMESPACE,
    multiprocess_mode="max",
)

PREDICTION_LOG_WRITTEN = Counter(
    "prediction_log_written",
    "Predictions written to the prediction record by the background writer (PREDICTION_LOG=async)",
    namespace=NAMESPACE,
)
# queue_full: answered while the queue held PREDICTION_LOG_QUEUE_ROWS (the database down, or too slow);
# write_error: the database refused the rows for good, or was still down at shutdown
DROP_REASONS = ("queue_full", "write_error")
PREDICTION_LOG_DROPPED = Counter(
    "prediction_log_dropped",
    "Predictions answered but not recorded (PREDICTION_LOG=async), by reason",
    ["reason"],
    namespace=NAMESPACE,
)
PREDICTION_LOG_QUEUE = Gauge(
    "prediction_log_queue_rows",
    "Predictions waiting in memory to be written, at the writer's last turn (summed over workers)",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)


class LiveFiguresCollector(Collector):
    """``bcd_live_quality_ratio``, ``bcd_live_labelled_predictions`` and ``bcd_feature_drift_psi`` of the
    served version, read at scrape time from the prediction record (app/records/live.py, cached for a few
    seconds), so every worker reports the same figures. ``source`` gives them (or None: no series)."""

    def __init__(self) -> None:
        self.source: Callable[[], LiveFigures | None] | None = None

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        quality, labelled, drift = self._families()
        figures = self.source() if self.source is not None else None
        if figures is not None:
            version = figures.version
            labelled.add_metric([version], float(figures.labelled))
            for name in QUALITY_METRICS:
                value = figures.quality.get(name)
                if value is not None:
                    quality.add_metric([name, version], value)
            for feature, value in (figures.drift or {}).items():
                drift.add_metric([feature, version], value)
        yield from (quality, labelled, drift)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                f"{NAMESPACE}_live_quality_ratio",
                "Quality of the served version over its newest LIVE_WINDOW labelled predictions "
                "(from LIVE_MIN_LABELLED outcomes on)",
                labels=["metric", "version"],
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_live_labelled_predictions",
                "Labelled predictions of the served version in the live window",
                labels=["version"],
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_feature_drift_psi",
                "Population stability index of each feature over the newest DRIFT_WINDOW predictions against "
                "the served version's training rows",
                labels=["feature", "version"],
            ),
        )


LIVE_FIGURES = LiveFiguresCollector()
REGISTRY.register(LIVE_FIGURES)

# children resolved once: a labelled lookup per request costs more than the increment
PREDICTED_BENIGN = PREDICTIONS.labels("benign")
PREDICTED_MALIGNANT = PREDICTIONS.labels("malignant")


def init_labels() -> None:
    """Create every bounded label combination at zero so dashboards and rate() see them from the start."""
    for step in STEPS:
        STEP_DURATION.labels(step)
        for outcome in OUTCOMES:
            STEP_OUTCOMES.labels(step, outcome)
    for reason in DROP_REASONS:
        PREDICTION_LOG_DROPPED.labels(reason)


def restore_timestamps(last_training: float | None, last_promotion: float | None) -> None:
    """Seed the last-training and last-promotion gauges from the registry at start-up."""
    if last_training is not None:
        LAST_TRAINING.set(last_training)
    if last_promotion is not None:
        LAST_PROMOTION.set(last_promotion)


def set_served_model(version: str, metrics: dict[str, float] | None, threshold: float) -> None:
    """Point the model gauges at the newly served version (the one before simply stops being reported)."""
    MODEL_INFO.version = version
    MODEL_THRESHOLD.set(threshold)
    for name in HEADLINE:
        if metrics and name in metrics:
            MODEL_QUALITY.labels(name).set(float(metrics[name]))


def exposition() -> bytes:
    """GET /metrics's text: this process's registry, or every worker's files in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(MODEL_INFO)
    registry.register(LIVE_FIGURES)
    return generate_latest(registry)


def record_prediction(probability: float, label: int) -> None:
    """``record_predictions`` of one /predict answer, without its checks and loop (the hot path)."""
    (PREDICTED_MALIGNANT if label else PREDICTED_BENIGN).inc()
    PREDICTION_PROBABILITY.observe(probability)


def record_predictions(
    probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> None:
    """Count predictions by label and observe their probabilities (vectorised for a batch)."""
    n = len(labels)
    malignant = int(np.count_nonzero(labels)) if isinstance(labels, np.ndarray) else sum(labels)
    if malignant:
        PREDICTED_MALIGNANT.inc(malignant)
    if n - malignant:
        PREDICTED_BENIGN.inc(n - malignant)
    if n < _VECTORISE_FROM:
        observe = PREDICTION_PROBABILITY.observe
        for p in probabilities:
            observe(p)
    else:
        observe_many(PREDICTION_PROBABILITY, np.asarray(probabilities, dtype=np.float64))


_VECTORISE_FROM = 32


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v, as one increment per bucket instead of one lock per value.

    prometheus_client has no bulk observe; this adds to the same per-bucket values ``observe`` does (the
    first bucket whose upper bound is >= v, then the sum), so the exported series are identical.
    """
    upper = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(upper, values, side="left"), minlength=len(upper))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))


# --- HTTP request metrics -------------------------------------------------------------------------
# The families, labels and buckets of prometheus-fastapi-instrumentator's default instrumentation, recorded
# by app.middleware.HttpMetrics with the label children resolved once per route (RouteMetrics).

HIGHR_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    1.5,
    2,
    2.5,
    3,
    3.5,
    4,
    4.5,
    5,
    7.5,
    10,
    30,
    60,
)
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "Total number of requests by method, status and handler.",
    ["method", "status", "handler"],
)
HTTP_REQUEST_SIZE = Summary(
    "http_request_size_bytes",
    "Content length of incoming requests by handler. Only value of header is respected. Otherwise ignored. "
    "No percentile calculated. ",
    ["handler"],
)
HTTP_RESPONSE_SIZE = Summary(
    "http_response_size_bytes",
    "Content length of outgoing responses by handler. Only value of header is respected. Otherwise "
    "ignored. No percentile calculated. ",
    ["handler"],
)
HTTP_LATENCY_HIGHR = Histogram(
    "http_request_duration_highr_seconds",
    "Latency with many buckets but no API specific labels. Made for more accurate percentile calculations. ",
    buckets=HIGHR_BUCKETS,
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Latency with only few buckets by handler. Made to be only used if aggregation by handler is important. ",
    ["method", "handler"],
    buckets=LATENCY_BUCKETS,
)
HTTP_INPROGRESS = Gauge(
    "http_requests_inprogress",
    "Number of HTTP requests in progress.",
    ["method", "handler"],
    multiprocess_mode="livesum",
)


class RouteMetrics:
    """The label children of one (method, handler), so a request does no label lookups."""

    __slots__ = ("by_status", "handler", "inprogress", "latency", "method", "request_size", "response_size")

    def __init__(self, method: str, handler: str) -> None:
        self.method = method
        self.handler = handler
        self.inprogress = HTTP_INPROGRESS.labels(method, handler)
        self.latency = HTTP_LATENCY.labels(method, handler)
        self.request_size = HTTP_REQUEST_SIZE.labels(handler)
        self.response_size = HTTP_RESPONSE_SIZE.labels(handler)
        self.by_status: dict[int, Any] = {}

    def record(self, status: int, duration: float, request_size: int, response_size: int) -> None:
        """One finished request: its status, duration and the two Content-Lengths (0 when absent)."""
        child = self.by_status.get(status)
        if child is None:
            child = self.by_status[status] = HTTP_REQUESTS.labels(self.method, str(status), self.handler)
        child.inc()
        self.request_size.observe(request_size)
        self.response_size.observe(response_size)
        HTTP_LATENCY_HIGHR.observe(duration)
        self.latency.observe(duration)
