"""etl.gate: each check on hand-made figures; and the gate in the pipeline on the bundled data: an honest
retrain passes, permuted and flipped labels are rejected (with a served model and without)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from etl.evaluate import classification_metrics
from etl.gate import (
    GateRule,
    Paired,
    binomial_tail,
    check_quality_gate,
    disagreement_limit,
    mcnemar_one_sided,
)
from etl.pipeline import evaluate_version, open_registry, train_version
from tests.conftest import BUNDLED_CSV
from tests.etl.conftest import served_copy
from tests.pipeline_support import QUICK_NESTED, make_settings
from tests.registry_support import reference_frame

RULE = GateRule(min_recall=0.95, min_precision=0.90, min_roc_auc=0.98, min_reference_roc_auc=0.90, alpha=0.01)


def nested(recall: float = 0.98, precision: float = 0.94, roc_auc: float = 0.99) -> dict[str, Any]:
    def est(v: float) -> dict[str, Any]:
        return {"mean": v, "std": 0.01, "ci95": [v - 0.02, min(1.0, v + 0.02)]}

    return {
        "metrics": {"recall": est(recall), "precision": est(precision), "roc_auc": est(roc_auc)},
        "rows": 539,
        "repeats": 3,
        "folds": 5,
    }


def reference(tp: int = 47, fn: int = 1, tn: int = 85, fp: int = 3, auc: float = 0.99) -> dict[str, Any]:
    return {
        "recall": tp / (tp + fn),
        "roc_auc": auc,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def names(verdict: Any, passed: bool) -> list[str]:
    return [c.name for c in verdict.checks if c.passed is passed]


def test_check_quality_gate_good_candidate_alone_passes_every_check():
    verdict = check_quality_gate(nested(), reference(), rule=RULE)
    assert verdict.passed and verdict.reasons == []
    assert names(verdict, True) == ["recall", "precision", "roc_auc", "reference_roc_auc", "reference_recall"]
    recall = verdict.checks[0]
    assert (recall.value, recall.limit, recall.interval) == (0.98, 0.95, [0.96, 1.0])
    assert "nested CV, 539 rows, 3x5 folds" in recall.basis
    assert verdict.to_dict()["passed"] is True


@pytest.mark.parametrize(
    ("kwargs", "failed"),
    [
        ({"recall": 0.9499}, "recall"),
        ({"precision": 0.85}, "precision"),
        ({"roc_auc": 0.97}, "roc_auc"),
    ],
)
def test_check_quality_gate_nested_estimate_below_floor_fails_naming_it(
    kwargs: dict[str, float], failed: str
):
    verdict = check_quality_gate(nested(**kwargs), reference(), rule=RULE)
    assert not verdict.passed
    assert names(verdict, False) == [failed]
    assert verdict.reasons[0].startswith(f"{failed} = ") and "FAILED" in verdict.reasons[0]
    assert "95%" in verdict.reasons[0] and "nested CV" in verdict.reasons[0]


def test_check_quality_gate_exactly_at_the_floors_passes():
    assert check_quality_gate(nested(0.95, 0.90, 0.98), reference(), rule=RULE).passed


def test_check_quality_gate_missing_nested_estimates_fails():
    verdict = check_quality_gate(None, reference(), rule=RULE)
    assert not verdict.passed and names(verdict, False) == ["nested estimates"]


@pytest.mark.parametrize(
    ("tp", "fn", "passed"),
    [(48, 0, True), (44, 4, True), (43, 5, True), (42, 6, False), (5, 43, False)],
)
def test_check_quality_gate_reference_recall_fails_only_when_confidently_below_the_floor(
    tp: int, fn: int, passed: bool
):
    verdict = check_quality_gate(nested(), reference(tp=tp, fn=fn), rule=RULE)
    check = next(c for c in verdict.checks if c.name == "reference_recall")
    assert check.passed is passed
    assert check.interval is not None and (check.interval[1] >= 0.95) is passed
    assert f"{tp} of {tp + fn} cancers caught" in check.detail


def test_check_quality_gate_reference_auc_catches_a_model_that_ranks_backwards():
    verdict = check_quality_gate(nested(), reference(tp=8, fn=40, auc=0.01), rule=RULE)
    assert {"reference_roc_auc", "reference_recall"} <= set(names(verdict, False))


def test_binomial_tail_and_mcnemar_hand_values():
    assert binomial_tail(0, 5, 0.3) == 1.0 and binomial_tail(6, 5, 0.3) == 0.0
    assert binomial_tail(5, 5, 0.5) == pytest.approx(1 / 32)
    assert mcnemar_one_sided(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_one_sided(7, 0) == pytest.approx(1 / 128)  # the fewest lone misses rejected at 0.01
    assert mcnemar_one_sided(2, 3) == pytest.approx(sum(math.comb(5, i) for i in range(2, 6)) / 32)
    assert mcnemar_one_sided(0, 0) == 1.0


def test_disagreement_limit_grows_with_the_measured_noise():
    assert disagreement_limit(136, 0.0) == disagreement_limit(136, 1 / 136) >= 3
    low, high = disagreement_limit(136, 0.02), disagreement_limit(136, 0.10)
    assert low < high < 136
    assert binomial_tail(high + 1, 136, 0.10) < 1e-3 <= binomial_tail(high, 136, 0.10)


def paired(
    miss_c: int = 0, miss_s: int = 0, alarm_c: int = 0, alarm_s: int = 0, d: int = 2, noise: float = 0.03
) -> Paired:
    return Paired("20250101T000000Z-00000000", miss_c, miss_s, alarm_c, alarm_s, d, 136, noise)


@pytest.mark.parametrize(
    ("pair", "failed"),
    [
        (paired(), []),
        (paired(miss_c=3, miss_s=0, d=3), []),  # p = 1/8: honest noise
        (paired(miss_c=7, miss_s=0, d=7), ["missed_cancers_vs_served"]),
        (paired(miss_c=8, miss_s=2, d=10), []),  # p = 56/1024 > 0.01
        (paired(alarm_c=10, alarm_s=1, d=11), ["false_alarms_vs_served"]),  # p = 12/2048
        (
            paired(miss_c=40, alarm_c=80, d=125),
            ["missed_cancers_vs_served", "false_alarms_vs_served", "agreement_with_served"],
        ),
    ],
)
def test_check_quality_gate_against_served_is_paired(pair: Paired, failed: list[str]):
    verdict = check_quality_gate(nested(), reference(), rule=RULE, paired=pair)
    assert names(verdict, False) == failed
    assert any(c.name == "agreement_with_served" for c in verdict.checks)
    if "agreement_with_served" in failed:
        assert any("contradict the served model" in r for r in verdict.reasons)


def test_paired_compare_counts_discordant_rows():
    y = np.array([1, 1, 1, 0, 0, 0])
    cand = np.array([0, 1, 1, 1, 0, 0])
    served = np.array([1, 1, 0, 0, 0, 1])
    p = Paired.compare("v", y, cand, served, 0.1)
    assert (p.missed_only_by_candidate, p.missed_only_by_served) == (1, 1)
    assert (p.alarms_only_by_candidate, p.alarms_only_by_served) == (1, 1)
    assert (p.disagreements, p.rows) == (4, 6)


# --- in the pipeline, on the bundled data ---------------------------------------------------------


def _variant(data_dir: Path, name: str, transform: Any) -> Path:
    """A copy of the bundled CSV with transformed labels, under DATA_DIR (where an override may point)."""
    frame = pd.read_csv(BUNDLED_CSV, dtype=str)
    frame["Class"] = transform(frame["Class"].astype(int).to_numpy())
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def served_registry(tmp_path_factory: pytest.TempPathFactory, served_template):
    base = tmp_path_factory.mktemp("gate")
    # train_version on the bundled data, then evaluate_version: it passed the gate alone and was promoted
    settings, honest = served_copy(served_template, base)
    registry = open_registry(settings)
    return base, settings, registry, honest


def test_gate_honest_retrain_passes_alone_and_against_the_served_model(served_registry):
    base, _, registry, served = served_registry
    first = registry.read_metrics(served)
    assert first is not None and registry.served_version() == served
    assert first["quality_gate"]["passed"] and not first["quality_gate"]["reasons"], first["quality_gate"]
    reseeded = make_settings(base, random_seed=7)
    candidate = train_version(reseeded, registry)
    assert not candidate.unchanged and candidate.version != served
    verdict = evaluate_version(reseeded, registry, candidate.version, promote=False)
    assert verdict.gate.passed, verdict.gate.reasons
    checks = {c.name for c in verdict.gate.checks}
    assert {"missed_cancers_vs_served", "false_alarms_vs_served", "agreement_with_served"} <= checks
    paired_block = verdict.metrics["reference"]["paired"]
    assert paired_block["served_version"] == served and paired_block["rows"] == 136


@pytest.mark.parametrize("with_served", [False, True])
def test_gate_permuted_and_flipped_labels_are_rejected(tmp_path: Path, served_registry, with_served: bool):
    _, settings, registry, served = served_registry
    if not with_served:  # a fresh registry: nothing served yet
        settings = make_settings(tmp_path)
        registry = open_registry(settings)
    # one repeat of two outer folds: the rejections below rest on figures far from any floor
    settings = settings.model_copy(update=QUICK_NESTED)
    permuted = _variant(settings.data_dir, "permuted", lambda y: np.random.default_rng(1).permutation(y))
    flipped = _variant(settings.data_dir, "flipped", lambda y: 1 - y)
    for path, must_fail in ((permuted, "roc_auc"), (flipped, "reference_roc_auc")):
        trained = train_version(settings, registry, str(path))
        verdict = evaluate_version(settings, registry, trained.version)
        assert not verdict.gate.passed and not verdict.promoted
        assert must_fail in [c.name for c in verdict.gate.checks if not c.passed], verdict.gate.reasons
        assert registry.served_version() == (served if with_served else None)
        assert registry.status(trained.version) == "rejected"
        if path is flipped:
            # its own (flipped) data says it is excellent; the trusted reference set says otherwise
            assert trained.nested["metrics"]["roc_auc"]["mean"] > 0.95
            assert verdict.metrics["reference"]["candidate"]["roc_auc"] < 0.1
            if with_served:
                assert any("contradict the served model" in r for r in verdict.gate.reasons)
                assert any(n.startswith("data changed") for n in verdict.gate.notes)


def test_gate_verdict_is_stored_with_the_reference_figures_of_both_models(served_registry):
    _, _, registry, served = served_registry
    stored = registry.read_metrics(served)
    assert stored is not None
    ref = stored["reference"]
    assert ref["rows"] == 136 and ref["malignant"] == 48 and len(ref["sha256"]) == 64
    y = registry.load_model(served)
    frame = reference_frame(registry.root)
    proba = y.proba(frame[[c for c in frame.columns if c not in ("Id", "Class")]].to_numpy(dtype=float))
    assert (
        ref["candidate"]["recall"]
        == classification_metrics(frame["Class"].to_numpy(), proba, y.threshold)["recall"]
    )
    assert stored["quality_gate"]["passed"] is True
