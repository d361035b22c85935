"""Every Prometheus metric the service exports, declared in one place.

Works with several uvicorn workers: when PROMETHEUS_MULTIPROC_DIR is set (``python -m app`` sets it up when
WORKERS > 1) prometheus_client writes each worker's values to files and a scrape aggregates them. Gauges
that describe the served model use ``mostrecent`` so every worker's latest value wins, not their sum.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from etl.evaluate import HEADLINE

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

MODEL_INFO = Gauge(
    "model_info",
    "The served model version (value 1 on the served version's label)",
    ["version"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
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
    "Pipeline steps run through the service, by outcome",
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

# children resolved once: a labelled lookup per request costs more than the increment
PREDICTED_BENIGN = PREDICTIONS.labels("benign")
PREDICTED_MALIGNANT = PREDICTIONS.labels("malignant")


def init_labels() -> None:
    """Create every bounded label combination at zero so dashboards and rate() see them from the start."""
    for step in STEPS:
        STEP_DURATION.labels(step)
        for outcome in ("success", "failure"):
            STEP_OUTCOMES.labels(step, outcome)


def set_served_model(
    version: str, metrics: dict[str, float] | None, threshold: float, previous: str | None
) -> None:
    """Point the model gauges at the newly served version."""
    if previous and previous != version:
        MODEL_INFO.labels(previous).set(0)
    MODEL_INFO.labels(version).set(1)
    MODEL_THRESHOLD.set(threshold)
    for name in HEADLINE:
        if metrics and name in metrics:
            MODEL_QUALITY.labels(name).set(float(metrics[name]))


def record_predictions(probabilities: list[float], labels: list[int]) -> None:
    malignant = sum(labels)
    if malignant:
        PREDICTED_MALIGNANT.inc(malignant)
    if len(labels) - malignant:
        PREDICTED_BENIGN.inc(len(labels) - malignant)
    observe = PREDICTION_PROBABILITY.observe
    for p in probabilities:
        observe(p)
