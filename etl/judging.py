"""The evaluate step: score a version, judge it with the quality gate (etl/gate.py) on its nested estimates
and on the reference set beside the served model, write its metrics.json, and promote it if it passes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from etl.evaluate import classification_metrics, library_versions, reliability_bins, with_intervals
from etl.features import FEATURE_COLUMNS, TARGET_COLUMN
from etl.gate import GateRule, GateVerdict, Paired, check_quality_gate
from etl.reference import ReferenceSet, ensure_reference
from etl.registry import Lease, Registry
from etl.report import write_report
from etl.scorer import LinearModel
from etl.settings import Settings

log = logging.getLogger(__name__)

# the reference-set figures compared between the candidate and the served model (``delta_vs_served``)
COMPARED = ("recall", "precision", "specificity", "accuracy", "f1", "roc_auc", "brier", "ece")


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
        block["delta_vs_served"] = {k: ref_metrics[k] - served_metrics[k] for k in COMPARED}
    verdict = check_quality_gate(nested, ref_metrics, rule=rule, paired=paired, notes=notes)
    return verdict, block


def evaluate_version(
    settings: Settings,
    registry: Registry,
    version: str | None = None,
    *,
    promote: bool = True,
    lease: Lease | None = None,
) -> EvaluateSummary:
    """Score a version, judge it with the quality gate, and promote it if it passes and ``promote``.

    The gate rests on the nested estimates recorded at training and on the reference set, where the
    candidate and the served model are compared row by row (etl/gate.py). The verdict is recorded as the
    version's evaluation (its metrics, under ``quality_gate``). The promotion is a compare-and-swap on the
    pointer as it was when the judging began: if another promotion changed the served model meanwhile, the
    candidate was judged against a model no longer served, and PromotionConflictError says to evaluate again.
    With ``lease`` (a pipeline run's training lease), the promotion is also refused once it is lost.
    """
    started = time.monotonic()
    version = version or registry.latest_version()
    judged_against = registry.pointer()
    meta = registry.read_meta(version)
    model = registry.load_model(version)
    holdout = registry.load_holdout(version)
    proba, _ = _predict(model, holdout)
    held_out = classification_metrics(holdout[TARGET_COLUMN].to_numpy(), proba, model.threshold)

    reference = ensure_reference(registry)
    notes = []
    if meta.get("reference_sha256") != reference.sha256:
        notes.append(
            "the reference set was replaced after this version was trained: it may have trained on some of "
            "its rows"
        )
    served_version = judged_against.version
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
    nested_pooled = registry.load_nested(version)
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
        # what the report prints besides the figures above (etl/report/ prints only metrics.json)
        "params": meta.get("params"),
        "class_counts": meta.get("class_counts"),
        "lineage": {"parent_version": (meta.get("lineage") or {}).get("parent_version")},
        "reliability": None
        if nested_pooled is None
        else {
            "basis": "nested CV, every row once per repeat",
            "rows": len(nested_pooled),
            "bins": reliability_bins(nested_pooled["y"].to_numpy(), nested_pooled["proba"].to_numpy()),
        },
    }
    evaluation_id = registry.write_metrics(version, metrics)
    try:
        write_report(registry, version, evaluation_id)
    except Exception:  # the report is for people: it never changes the verdict or blocks a promotion
        log.exception(
            "evaluate: the report of version %s could not be written; the verdict stands. Regenerate it with "
            "`python -m etl report %s`",
            version,
            version,
        )
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
        registry.promote(version, expected_epoch=judged_against.epoch, lease=lease)
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
