"""The pipeline's steps wired together: train, evaluate (+ promote), promote, upload, and run-all.

The service and the CLI both call these functions; they hold no HTTP or Airflow concepts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from etl.evaluate import classification_metrics, evaluate_model, predict_proba
from etl.features import TARGET_COLUMN
from etl.gate import GateVerdict, check_quality_gate
from etl.load import LoadResult, load_data, prepare_loaded, source_policy
from etl.registry import Registry, new_version_name
from etl.settings import Settings
from etl.train import train_model
from etl.validate import split_train_test

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    version: str
    data_sha256: str
    data_source: str
    rows: dict[str, int]
    threshold: float
    cv: dict[str, dict[str, float]]
    duration_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvaluateSummary:
    version: str
    metrics: dict[str, Any]
    gate: GateVerdict
    promoted: bool
    served_version: str | None
    duration_seconds: float = 0.0
    promote_duration_seconds: float | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "metrics": self.metrics,
            "gate": self.gate.to_dict(),
            "promoted": self.promoted,
            "served_version": self.served_version,
            "duration_seconds": self.duration_seconds,
        }


def load_with_settings(settings: Settings, source: str) -> LoadResult:
    """``load_data`` with the download limits and folders from ``settings``."""
    return load_data(
        source,
        settings.raw_dir,
        connect_timeout=settings.http_connect_timeout,
        read_timeout=settings.http_read_timeout,
        retries=settings.download_retries,
        max_bytes=settings.max_data_bytes,
        deadline_seconds=settings.download_deadline_seconds,
        policy=source_policy(settings, source),
    )


def train_version(settings: Settings, registry: Registry, data_url: str | None = None) -> TrainSummary:
    """Load, validate, split and train; register the result as a new (not yet served) version.

    Raises:
        TrainingInProgressError: another training is running.
        DataSourceError, DataFormatError, DataValidationError: the data could not be used.
    """
    source = data_url or settings.data_url
    with registry.training_lock():
        started = time.monotonic()
        loaded = load_with_settings(settings, source)
        prepared = prepare_loaded(
            loaded, registry, max_rows=settings.max_data_rows, raw_retention=settings.raw_retention
        )
        train, test = split_train_test(
            prepared.frame, test_size=settings.test_size, seed=settings.random_seed
        )
        result = train_model(train, seed=settings.random_seed, target_recall=settings.target_recall)
        rows = {
            "raw": prepared.counts.raw,
            "missing_dropped": prepared.counts.missing_dropped,
            "duplicates_dropped": prepared.counts.duplicates_dropped,
            "clean": prepared.counts.clean,
            "train": len(train),
            "test": len(test),
        }
        version = new_version_name(loaded.sha256)
        meta = {
            "data_source": loaded.source,
            "data_sha256": loaded.sha256,
            "threshold": result.threshold,
            "params": result.params,
            "cv": result.cv,
            "rows": rows,
            "class_counts": {"train": _class_counts(train), "test": _class_counts(test)},
            "lineage": {
                "parent_version": registry.served_version(),
                "raw_file": str(loaded.path),
                "test_size": settings.test_size,
            },
            "train_duration_seconds": result.duration_seconds,
        }
        registry.create_version(version, result.pipeline, meta, test)
        duration = time.monotonic() - started
    log.info(
        "train: version %s from %s (%d train / %d test rows) in %.2fs",
        version,
        loaded.source,
        len(train),
        len(test),
        duration,
    )
    return TrainSummary(version, loaded.sha256, loaded.source, rows, result.threshold, result.cv, duration)


def _class_counts(frame: Any) -> dict[str, int]:
    counts = frame[TARGET_COLUMN].value_counts()
    return {"benign": int(counts.get(0, 0)), "malignant": int(counts.get(1, 0))}


def evaluate_version(
    settings: Settings, registry: Registry, version: str | None = None, *, promote: bool = True
) -> EvaluateSummary:
    """Score a version on its held-out split, judge it with the quality gate, and promote it if asked.

    The gate also compares the candidate with the served model, both scored on the candidate's held-out
    rows. The verdict is written into the version's metrics.json under ``quality_gate``.
    """
    started = time.monotonic()
    version = version or registry.latest_version()
    pipeline, meta = registry.load_pipeline(version)
    holdout = registry.load_holdout(version)
    metrics = evaluate_model(pipeline, holdout, float(meta["threshold"]), meta)

    served = registry.served_version()
    served_metrics = None
    if served is not None and served != version:
        served_pipeline, served_meta = registry.load_pipeline(served)
        served_metrics = classification_metrics(
            holdout[TARGET_COLUMN].to_numpy(),
            predict_proba(served_pipeline, holdout),
            float(served_meta["threshold"]),
        )
        metrics["served_comparison"] = {
            "version": served,
            **{k: served_metrics[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")},
        }
    verdict = check_quality_gate(
        metrics,
        min_recall=settings.gate_min_recall,
        min_precision=settings.gate_min_precision,
        min_roc_auc=settings.gate_min_roc_auc,
        served_metrics=served_metrics,
        tolerance=settings.gate_tolerance,
    )
    metrics["quality_gate"] = verdict.to_dict()
    registry.write_metrics(version, metrics)
    log.info(
        "evaluate: version %s accuracy %.4f precision %.4f recall %.4f f1 %.4f roc_auc %.4f; gate %s%s",
        version,
        metrics["accuracy"],
        metrics["precision"],
        metrics["recall"],
        metrics["f1"],
        metrics["roc_auc"],
        "passed" if verdict.passed else "FAILED",
        "" if verdict.passed else ": " + "; ".join(verdict.reasons),
    )
    promoted = False
    promote_seconds = None
    if promote and verdict.passed:
        promote_started = time.monotonic()
        registry.promote(version)
        promote_seconds = time.monotonic() - promote_started
        promoted = True
    return EvaluateSummary(
        version,
        metrics,
        verdict,
        promoted,
        registry.served_version(),
        time.monotonic() - started,
        promote_seconds,
    )
