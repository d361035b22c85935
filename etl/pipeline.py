"""The pipeline's steps wired together: train, evaluate (+ promote), and run-all.

The service and the CLI both call these functions; they hold no HTTP or Airflow concepts.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

import etl
from etl.evaluate import (
    HEADLINE,
    classification_metrics,
    library_versions,
    summarise_nested,
    with_intervals,
)
from etl.features import FEATURE_COLUMNS, ID_COLUMN, TARGET_COLUMN
from etl.gate import GateRule, GateVerdict, Paired, check_quality_gate
from etl.load import LoadResult, load_data, prepare_loaded, source_policy
from etl.reference import ReferenceSet, ensure_reference
from etl.registry import (
    HOLDOUT_FILE,
    MODEL_FILE,
    MODEL_JSON,
    NESTED_FILE,
    NESTED_MODELS_FILE,
    Registry,
    new_version_name,
)
from etl.scorer import LinearModel, check_parity
from etl.settings import BUNDLED_DATA_PATH, Settings
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


def open_registry(settings: Settings) -> Registry:
    """The registry in RESULTS_DIR, signing with MODEL_SIGNING_KEY (or its key file)."""
    return Registry(settings.results_dir, settings.signing_key())


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


def reference_set(settings: Settings) -> ReferenceSet:
    return ensure_reference(settings.results_dir, BUNDLED_DATA_PATH)


def fingerprint(data_sha256: str, settings: Settings, reference_sha256: str) -> str:
    """Equal for two trainings that must give the same model: data, settings, reference set, libraries."""
    document = {
        "data_sha256": data_sha256,
        "settings": {name: getattr(settings, name) for name in TRAINING_SETTINGS},
        "reference_sha256": reference_sha256,
        "libraries": library_versions(),
        "procedure": etl.__version__,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _class_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame[TARGET_COLUMN].value_counts()
    return {"benign": int(counts.get(0, 0)), "malignant": int(counts.get(1, 0))}


def _choose_calibration(nested: Any, setting: str) -> tuple[str, dict[str, dict[str, float]]]:
    """The calibration to serve, and each method's nested Brier, ECE and missed cancers.

    ``auto`` keeps the method with the lowest nested Brier score among those that miss no more cancers than
    no calibration at all (a monotone calibration changes the ranking little; this guards the target).
    """
    from etl.evaluate import _scores

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
    settings: Settings, registry: Registry, data_url: str | None = None, *, force: bool = False
) -> TrainSummary:
    """Load, validate and train (``train_on``); register the result as a new (not yet served) version.

    When a version trained from the same data, settings, reference set and libraries exists, that version
    is returned with ``unchanged`` true and nothing is trained, unless ``force``.

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
        reference = reference_set(settings)
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
            MODEL_JSON: _json_bytes(model.to_dict()),
            MODEL_FILE: buffer.getvalue(),
            HOLDOUT_FILE: trained.test.to_csv(index=False).encode(),
            NESTED_FILE: trained.nested.pooled(method).to_csv(index=False).encode(),
            NESTED_MODELS_FILE: _json_bytes([m.to_dict() for m in trained.nested_models()]),
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
        registry.create_version(version, files, meta)
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


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, str | int | float | bool | type(None)) else str(v) for k, v in params.items()
    }


def _predict(model: LinearModel, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    proba = model.proba(frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float))
    return proba, (proba >= model.threshold).astype(int)


def noise_rate(models: list[LinearModel], X: np.ndarray) -> float:
    """The largest share of rows on which two of ``models`` (one procedure, reseeded folds) disagree."""
    if len(models) < 2:
        return 0.0
    preds = np.array([(m.proba(X) >= m.threshold).astype(int) for m in models])
    worst = 0.0
    for i in range(len(preds)):
        worst = max(worst, float(np.max(np.mean(preds[i + 1 :] != preds[i], axis=1), initial=0.0)))
    return worst


def _balance_note(meta: dict[str, Any], served_meta: dict[str, Any]) -> str | None:
    """A note when the malignant share of the data moved beyond chance (two-proportion z test, p < 0.01)."""
    a, b = (meta.get("class_counts") or {}).get("data"), (served_meta.get("class_counts") or {}).get("data")
    if not a or not b:
        return None
    n1, n2 = a["benign"] + a["malignant"], b["benign"] + b["malignant"]
    p1, p2 = a["malignant"] / n1, b["malignant"] / n2
    pooled = (a["malignant"] + b["malignant"]) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2)) or 1.0
    z = (p1 - p2) / se
    if abs(z) < 2.576:
        return None
    return (
        f"label balance changed: malignant share {p1:.1%} of {n1} rows vs {p2:.1%} of {n2} for the served "
        f"model's data (z = {z:.1f})"
    )


def gate_rule(settings: Settings) -> GateRule:
    return GateRule(
        min_recall=settings.gate_min_recall,
        min_precision=settings.gate_min_precision,
        min_roc_auc=settings.gate_min_roc_auc,
        min_reference_roc_auc=settings.gate_min_reference_roc_auc,
        alpha=settings.gate_alpha,
    )


def judge(
    nested: dict[str, Any] | None,
    model: LinearModel,
    nested_models: list[LinearModel],
    reference: ReferenceSet,
    rule: GateRule,
    served: tuple[str, LinearModel] | None = None,
    notes: list[str] | None = None,
) -> tuple[GateVerdict, dict[str, Any]]:
    """The gate's verdict on a candidate, and what it was judged on (the reference-set block of metrics.json).

    Pure: the evaluate step and the gate study both call it.
    """
    y_ref = reference.frame[TARGET_COLUMN].to_numpy()
    ref_proba, ref_pred = _predict(model, reference.frame)
    ref_metrics = classification_metrics(y_ref, ref_proba, model.threshold)
    block: dict[str, Any] = {
        **reference.describe(),
        "candidate": {**ref_metrics, "intervals": with_intervals(ref_metrics)},
    }
    paired = None
    if served is not None:
        served_version, served_model = served
        served_proba, served_pred = _predict(served_model, reference.frame)
        served_metrics = classification_metrics(y_ref, served_proba, served_model.threshold)
        X_ref = reference.frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float)
        paired = Paired.compare(
            served_version, y_ref, ref_pred, served_pred, noise_rate(nested_models, X_ref)
        )
        block["served"] = {
            "version": served_version,
            **served_metrics,
            "intervals": with_intervals(served_metrics),
        }
        block["paired"] = asdict(paired)
    verdict = check_quality_gate(nested, ref_metrics, rule=rule, paired=paired, notes=notes)
    return verdict, block


def evaluate_version(
    settings: Settings, registry: Registry, version: str | None = None, *, promote: bool = True
) -> EvaluateSummary:
    """Score a version, judge it with the quality gate, and promote it if it passes and ``promote``.

    The gate rests on the nested estimates recorded at training and on the reference set, where the
    candidate and the served model are compared row by row (etl/gate.py). The verdict is written into the
    version's metrics.json under ``quality_gate``.
    """
    started = time.monotonic()
    version = version or registry.latest_version()
    meta = registry.read_meta(version)
    model = registry.load_model(version)
    holdout = registry.load_holdout(version)
    proba, _ = _predict(model, holdout)
    held_out = classification_metrics(holdout[TARGET_COLUMN].to_numpy(), proba, model.threshold)

    reference = reference_set(settings)
    notes = []
    if meta.get("reference_sha256") != reference.sha256:
        notes.append(
            "the reference set was replaced after this version was trained: it may have trained on some of "
            "its rows"
        )
    served_version = registry.served_version()
    served = None
    if served_version is not None and served_version != version:
        served = (served_version, registry.load_model(served_version))
        served_meta = registry.read_meta(served_version)
        if served_meta.get("data_sha256") != meta.get("data_sha256"):
            notes.append(
                f"data changed: sha256 {str(meta.get('data_sha256'))[:12]}... vs "
                f"{str(served_meta.get('data_sha256'))[:12]}... for the served version {served_version}"
            )
        balance = _balance_note(meta, served_meta)
        if balance:
            notes.append(balance)
        if served_meta.get("reference_sha256") != reference.sha256:
            notes.append(
                f"the served version {served_version} was trained before the current reference set was pinned"
            )
    verdict, reference_block = judge(
        meta.get("nested"),
        model,
        registry.load_nested_models(version),
        reference,
        gate_rule(settings),
        served,
        notes,
    )
    metrics: dict[str, Any] = {
        **held_out,
        "held_out": {**held_out, "intervals": with_intervals(held_out), "rows": len(holdout)},
        "threshold": model.threshold,
        "calibration": meta.get("calibration"),
        "nested": meta.get("nested"),
        "reference": reference_block,
        "quality_gate": verdict.to_dict(),
        "rows": meta.get("rows", {}),
        "data_sha256": meta.get("data_sha256"),
        "data_source": meta.get("data_source"),
        "model_version": version,
        "trained_at": meta.get("created_at"),
        "evaluated_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "versions": meta.get("libraries") or library_versions(),
    }
    registry.write_metrics(version, metrics)
    cand = reference_block["candidate"]
    log.info(
        "evaluate: version %s nested recall %s, reference recall %.4f (%d rows); gate %s%s",
        version,
        f"{meta['nested']['metrics']['recall']['mean']:.4f}" if meta.get("nested") else "n/a",
        cand["recall"],
        reference_block["rows"],
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


__all__ = [
    "HEADLINE",
    "EvaluateSummary",
    "TrainSummary",
    "evaluate_version",
    "open_registry",
    "train_version",
]
