"""etl.gate: absolute minimums, the comparison with the served model, the tolerance; and in the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.evaluate import classification_metrics, predict_proba
from etl.gate import check_quality_gate
from etl.pipeline import evaluate_version, train_version
from etl.registry import Registry
from tests.pipeline_support import make_settings

GOOD = {"recall": 0.97, "precision": 0.93, "roc_auc": 0.99, "f1": 0.95}
LIMITS = {"min_recall": 0.95, "min_precision": 0.90, "min_roc_auc": 0.98}


def test_check_quality_gate_all_minimums_met_passes():
    verdict = check_quality_gate(GOOD, **LIMITS)
    assert verdict.passed
    assert [(c.name, c.value, c.limit, c.passed) for c in verdict.checks] == [
        ("recall", 0.97, 0.95, True),
        ("precision", 0.93, 0.90, True),
        ("roc_auc", 0.99, 0.98, True),
    ]
    assert verdict.reasons == []
    assert verdict.to_dict()["passed"] is True


@pytest.mark.parametrize(
    ("metric", "value"),
    [("recall", 0.9499), ("precision", 0.85), ("roc_auc", 0.97)],
)
def test_check_quality_gate_below_a_minimum_fails_naming_it(metric: str, value: float):
    verdict = check_quality_gate({**GOOD, metric: value}, **LIMITS)
    assert not verdict.passed
    failed = [c for c in verdict.checks if not c.passed]
    assert [c.name for c in failed] == [metric]
    assert len(verdict.reasons) == 1
    assert verdict.reasons[0].startswith(f"{metric} = {value:.4f}") and "FAILED" in verdict.reasons[0]
    assert verdict.to_dict()["reasons"] == verdict.reasons


def test_check_quality_gate_exactly_at_minimum_passes():
    verdict = check_quality_gate({**GOOD, "recall": 0.95, "precision": 0.90, "roc_auc": 0.98}, **LIMITS)
    assert verdict.passed


@pytest.mark.parametrize(
    ("candidate", "served", "tolerance", "passed"),
    [
        ({"recall": 0.97, "f1": 0.95}, {"recall": 0.97, "f1": 0.95}, 0.01, True),
        ({"recall": 0.961, "f1": 0.95}, {"recall": 0.97, "f1": 0.95}, 0.01, True),
        ({"recall": 0.96, "f1": 0.94}, {"recall": 0.97, "f1": 0.95}, 0.01, True),  # exactly at the limit
        ({"recall": 0.959, "f1": 0.95}, {"recall": 0.97, "f1": 0.95}, 0.01, False),
        ({"recall": 0.97, "f1": 0.93}, {"recall": 0.97, "f1": 0.95}, 0.01, False),
        ({"recall": 0.96, "f1": 0.95}, {"recall": 0.97, "f1": 0.95}, 0.0, False),
        ({"recall": 0.96, "f1": 0.95}, {"recall": 0.97, "f1": 0.95}, 0.05, True),
    ],
)
def test_check_quality_gate_compares_with_served_within_tolerance(
    candidate: dict[str, float], served: dict[str, float], tolerance: float, passed: bool
):
    verdict = check_quality_gate(
        {**GOOD, **candidate}, **LIMITS, served_metrics={**GOOD, **served}, tolerance=tolerance
    )
    assert verdict.passed is passed
    by_name = {c.name: c for c in verdict.checks}
    assert set(by_name) == {"recall", "precision", "roc_auc", "recall_vs_served", "f1_vs_served"}
    assert by_name["recall_vs_served"].limit == pytest.approx(served["recall"] - tolerance)
    assert by_name["f1_vs_served"].limit == pytest.approx(served["f1"] - tolerance)
    assert by_name["recall_vs_served"].value == candidate["recall"]


# --- in the pipeline: the served model is scored on the candidate's held-out rows ---------------


def test_evaluate_version_compares_with_served_on_candidates_holdout(tmp_path: Path):
    settings = make_settings(tmp_path)
    registry = Registry(settings.results_dir)
    v1 = train_version(settings, registry).version
    assert evaluate_version(settings, registry, v1).promoted

    # a candidate tuned for much lower recall: passes loose minimums, fails the no-regression check
    loose = make_settings(
        tmp_path, target_recall=0.5, gate_min_recall=0.0, gate_min_precision=0.0, gate_min_roc_auc=0.0
    )
    v2 = train_version(loose, registry).version
    summary = evaluate_version(loose, registry, v2)

    holdout = registry.load_holdout(v2)
    served_pipeline, served_meta = registry.load_pipeline(v1)
    served = classification_metrics(
        holdout["Class"].to_numpy(), predict_proba(served_pipeline, holdout), served_meta["threshold"]
    )
    comparison = summary.metrics["served_comparison"]
    assert comparison["version"] == v1
    assert comparison["recall"] == served["recall"] and comparison["f1"] == served["f1"]
    checks = {c.name: c for c in summary.gate.checks}
    assert checks["recall_vs_served"].limit == pytest.approx(served["recall"] - 0.01)
    assert not checks["recall_vs_served"].passed
    assert checks["recall"].passed and checks["precision"].passed and checks["roc_auc"].passed
    assert not summary.gate.passed and not summary.promoted
    assert registry.served_version() == v1
    assert registry.status(v2) == "rejected"
    stored = registry.read_metrics(v2)
    assert stored is not None and stored["quality_gate"] == summary.gate.to_dict()
