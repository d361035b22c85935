"""The train step: load and validate the data, run the training procedure (etl/train.py) and register the
result as a new version, not yet served. A training with the same data, settings, reference set and
libraries as an existing version is skipped.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

import etl
from etl.atomic import json_bytes
from etl.evaluate import _scores, library_versions, summarise_nested
from etl.features import FEATURE_COLUMNS, ID_COLUMN, TARGET_COLUMN
from etl.hashing import sha256_bytes
from etl.load import load_and_prepare
from etl.monitoring import feature_distribution
from etl.reference import ensure_reference
from etl.registry import (
    HOLDOUT_FILE,
    MODEL_FILE,
    MODEL_JSON,
    NESTED_FILE,
    NESTED_MODELS_FILE,
    Lease,
    Registry,
    new_version_name,
)
from etl.scorer import LinearModel, check_parity
from etl.settings import Settings
from etl.validate import split_train_test

log = logging.getLogger(__name__)

# the settings that decide what a training produces (with the data, the reference set and the libraries)
TRAINING_SETTINGS = (
    "test_size",
    "random_seed",
    "target_recall",
    "calibration",
    "nested_repeats",
    "nested_folds",
)


@dataclass
class TrainSummary:
    version: str
    unchanged: bool
    data_sha256: str
    data_source: str
    rows: dict[str, int]
    threshold: float
    calibration: str
    nested: dict[str, Any]
    duration_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(data_sha256: str, settings: Settings, reference_sha256: str) -> str:
    """Equal for two trainings that must give the same model: data, settings, reference set, libraries."""
    document = {
        "data_sha256": data_sha256,
        "settings": {name: getattr(settings, name) for name in TRAINING_SETTINGS},
        "reference_sha256": reference_sha256,
        "libraries": library_versions(),
        "procedure": etl.__version__,
    }
    return sha256_bytes(json.dumps(document, sort_keys=True).encode())


def _class_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame[TARGET_COLUMN].value_counts()
    return {"benign": int(counts.get(0, 0)), "malignant": int(counts.get(1, 0))}


def _choose_calibration(nested: Any, setting: str) -> tuple[str, dict[str, dict[str, float]]]:
    """The calibration to serve, and each method's nested Brier, ECE and missed cancers.

    ``auto`` keeps the method with the lowest nested Brier score among those that miss no more cancers than
    no calibration at all (a monotone calibration changes the ranking little; this guards the target).
    """
    figures: dict[str, dict[str, float]] = {}
    for method in ("none", "sigmoid", "isotonic"):
        pooled = nested.pooled(method)
        y, p, pred = pooled["y"].to_numpy(), pooled["proba"].to_numpy(), pooled["pred"].to_numpy()
        scores = _scores(y, p, pred)
        figures[method] = {
            "brier": scores["brier"],
            "ece": scores["ece"],
            "missed_cancers": float(((pred == 0) & (y == 1)).sum() / nested.repeats),
        }
    if setting != "auto":
        return setting, figures
    allowed = [m for m in figures if figures[m]["missed_cancers"] <= figures["none"]["missed_cancers"] + 1e-9]
    return min(allowed, key=lambda m: (figures[m]["brier"], m != "none")), figures


@dataclass
class Trained:
    """What one run of the training procedure produced, before anything is written."""

    model: LinearModel
    artifact: Any
    fitted: Any  # etl.train.Fitted (the final model's procedure)
    nested: Any  # etl.train.NestedCV over the pool
    method: str
    summary: dict[str, Any]
    pool: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    reference_excluded: int

    def nested_models(self) -> list[LinearModel]:
        return [outer.fitted.model(self.method) for outer in self.nested.folds]


def train_on(frame: pd.DataFrame, reference_ids: set[int], settings: Settings) -> Trained:
    """The training procedure on a clean frame, with no I/O: exclude the reference patients, split off the
    held-out rows, fit, run the nested cross-validation over the whole pool, choose the calibration."""
    from etl.train import arrays, download_artifact, fit_procedure, nested_cv

    in_reference = frame[ID_COLUMN].isin(reference_ids)
    pool = frame[~in_reference]
    train, test = split_train_test(pool, test_size=settings.test_size, seed=settings.random_seed)
    X, y, groups = arrays(train)
    seed, target = settings.random_seed, settings.target_recall
    fitted = fit_procedure(X, y, groups, seed=seed, target_recall=target)
    X_pool, y_pool, g_pool = arrays(pool)
    nested = nested_cv(
        X_pool,
        y_pool,
        g_pool,
        seed=seed,
        target_recall=target,
        repeats=settings.nested_repeats,
        folds=settings.nested_folds,
    )
    method, calibration_figures = _choose_calibration(nested, settings.calibration)
    summary = summarise_nested(nested.pooled(method), seed=seed)
    summary["calibration"] = {
        "chosen": method,
        "setting": settings.calibration,
        "methods": calibration_figures,
    }
    model = fitted.model(method)
    artifact = download_artifact(fitted, X, y, method, seed)
    return Trained(
        model, artifact, fitted, nested, method, summary, pool, train, test, int(in_reference.sum())
    )


def train_version(
    settings: Settings,
    registry: Registry,
    data_url: str | None = None,
    *,
    force: bool = False,
    lease: Lease | None = None,
) -> TrainSummary:
    """Load, validate and train (``train_on``); register the result as a new (not yet served) version.

    When a version trained from the same data, settings, reference set and libraries exists, that version
    is returned with ``unchanged`` true and nothing is trained, unless ``force``. The training lease is taken
    for the training, or ``lease`` (held by the caller, e.g. a whole pipeline run) is used.

    Raises:
        TrainingInProgressError: another training is running (on any host sharing the registry).
        LeaseLostError: the lease was taken over during the training (this one stalled past its expiry);
            nothing is registered.
        DataSourceError, DataFormatError, DataValidationError: the data could not be used.
    """
    with contextlib.nullcontext(lease) if lease is not None else registry.training_lock() as held:
        started = time.monotonic()
        loaded, prepared = load_and_prepare(settings, registry, data_url)
        reference = ensure_reference(registry)
        print_ = fingerprint(loaded.sha256, settings, reference.sha256)
        existing = None if force else registry.find_fingerprint(print_)
        if existing is not None:
            meta = registry.read_meta(existing)
            log.info("train: data unchanged since version %s (same data, settings and libraries)", existing)
            return TrainSummary(
                existing,
                True,
                loaded.sha256,
                loaded.source,
                meta["rows"],
                float(meta["threshold"]),
                meta["calibration"],
                meta["nested"],
                time.monotonic() - started,
            )
        trained = train_on(prepared.frame, reference.ids, settings)
        model, method, summary = trained.model, trained.method, trained.summary
        X_train = trained.train.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float)
        parity = check_parity(model, trained.artifact, X_train)
        import joblib

        buffer = io.BytesIO()
        joblib.dump(trained.artifact, buffer)
        files = {
            MODEL_JSON: json_bytes(model.to_dict()),
            MODEL_FILE: buffer.getvalue(),
            HOLDOUT_FILE: trained.test.to_csv(index=False).encode(),
            NESTED_FILE: trained.nested.pooled(method).to_csv(index=False).encode(),
            NESTED_MODELS_FILE: json_bytes([m.to_dict() for m in trained.nested_models()]),
        }
        rows = {
            "raw": prepared.counts.raw,
            "missing_dropped": prepared.counts.missing_dropped,
            "duplicates_dropped": prepared.counts.duplicates_dropped,
            "clean": prepared.counts.clean,
            "reference_excluded": trained.reference_excluded,
            "train": len(trained.train),
            "test": len(trained.test),
        }
        version = new_version_name(loaded.sha256)
        meta = {
            "data_source": loaded.source,
            "data_sha256": loaded.sha256,
            "fingerprint": print_,
            "threshold": model.threshold,
            "calibration": method,
            "params": {
                "model": "StandardScaler+LogisticRegression",
                "classifier": _plain(trained.fitted.pipeline.named_steps["classifier"].get_params()),
                "calibration": method,
                "seed": settings.random_seed,
                "target_recall": settings.target_recall,
                "inner_folds": len(trained.fitted.folds),
                "features": list(FEATURE_COLUMNS),
            },
            "nested": summary,
            "rows": rows,
            "class_counts": {
                "data": _class_counts(prepared.frame),
                "train": _class_counts(trained.train),
                "test": _class_counts(trained.test),
            },
            "reference_sha256": reference.sha256,
            # each feature's counts over its scores in the training rows: the reference of live input drift
            "feature_distribution": feature_distribution(X_train),
            "parity_max_abs_diff": parity,
            "libraries": library_versions(),
            "lineage": {
                "parent_version": registry.served_version(),
                "raw_file": str(loaded.path),
                "test_size": settings.test_size,
            },
            "train_duration_seconds": time.monotonic() - started,
            "nested_duration_seconds": trained.nested.duration_seconds,
        }
        registry.create_version(version, files, meta, lease=held)
        duration = time.monotonic() - started
    nm = summary["metrics"]
    log.info(
        "train: version %s from %s in %.2fs (%d train / %d held-out / %d reference-excluded rows); "
        "nested recall %.3f [%.3f-%.3f], precision %.3f, ROC-AUC %.4f, Brier %.4f; calibration %s; "
        "threshold %.4f",
        version,
        loaded.source,
        duration,
        rows["train"],
        rows["test"],
        rows["reference_excluded"],
        nm["recall"]["mean"],
        *nm["recall"]["ci95"],
        nm["precision"]["mean"],
        nm["roc_auc"]["mean"],
        nm["brier"]["mean"],
        method,
        model.threshold,
    )
    return TrainSummary(
        version, False, loaded.sha256, loaded.source, rows, model.threshold, method, summary, duration
    )


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, str | int | float | bool | type(None)) else str(v) for k, v in params.items()
    }
