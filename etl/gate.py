"""The quality gate: which checks a candidate must pass to be served, each judged on evidence large enough
to decide it.

1. **Floors on the nested estimates** (recall, precision, ROC-AUC): the whole training procedure
   cross-validated over every patient of the candidate's data; their noise across reseeded retrains is a
   fraction of the margin (docs/model.md has the measured rates).
2. **Sanity on the reference set**, trusted rows the new data cannot rewrite: ROC-AUC at least
   ``GATE_MIN_REFERENCE_ROC_AUC`` and recall not confidently below ``GATE_MIN_RECALL`` (the upper end of its
   Wilson 95% interval). A model trained on flipped or scrambled labels fails here even when its own
   (corrupted) data says it is perfect.
3. **Against the served model, paired on the reference set** (neither trained on those rows): an exact
   one-sided McNemar test on the cancers only one of the two catches (and on the false alarms only one of
   the two raises), at ``GATE_ALPHA``; and the share of reference rows on which the two disagree, against the
   disagreement measured between the candidate's own nested-CV models (its honest noise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from etl.evaluate import wilson_interval

CONTRADICTION_ALPHA = 1e-3


@dataclass(frozen=True)
class GateRule:
    min_recall: float = 0.95
    min_precision: float = 0.90
    min_roc_auc: float = 0.98
    min_reference_roc_auc: float = 0.90
    alpha: float = 0.01


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float
    limit: float
    passed: bool
    basis: str
    interval: list[float] | None = None
    comparator: str = ">="
    detail: str = ""

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        ci = f" [95% {self.interval[0]:.4f}-{self.interval[1]:.4f}]" if self.interval else ""
        extra = f"; {self.detail}" if self.detail else ""
        limit = f"limit {self.comparator} {self.limit:.4f}, {self.basis}"
        return f"{self.name} = {self.value:.4f}{ci} ({limit}) {verdict}{extra}"


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.describe() for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "reasons": self.reasons,
            "notes": list(self.notes),
        }


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def mcnemar_one_sided(worse: int, better: int) -> float:
    """Exact one-sided McNemar p-value that the candidate is worse: P(X >= worse), X ~ Bin(n, 1/2)."""
    return binomial_tail(worse, worse + better, 0.5)


def disagreement_limit(n: int, noise_rate: float, alpha: float = CONTRADICTION_ALPHA) -> int:
    """The most disagreements out of ``n`` that honest noise at ``noise_rate`` explains at level ``alpha``."""
    rate = min(max(noise_rate, 1.0 / n), 1.0)
    for d in range(n + 1):
        if binomial_tail(d + 1, n, rate) < alpha:
            return d
    return n


@dataclass(frozen=True)
class Paired:
    """The candidate and the served model on the same reference rows."""

    served_version: str
    missed_only_by_candidate: int
    missed_only_by_served: int
    alarms_only_by_candidate: int
    alarms_only_by_served: int
    disagreements: int
    rows: int
    noise_rate: float

    @classmethod
    def compare(
        cls, served_version: str, y: np.ndarray, candidate: np.ndarray, served: np.ndarray, noise_rate: float
    ) -> Paired:
        m, b = y == 1, y == 0
        return cls(
            served_version,
            int((m & (candidate == 0) & (served == 1)).sum()),
            int((m & (candidate == 1) & (served == 0)).sum()),
            int((b & (candidate == 1) & (served == 0)).sum()),
            int((b & (candidate == 0) & (served == 1)).sum()),
            int((candidate != served).sum()),
            len(y),
            noise_rate,
        )


def check_quality_gate(
    nested: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    *,
    rule: GateRule,
    paired: Paired | None = None,
    notes: list[str] | None = None,
) -> GateVerdict:
    """Judge a candidate.

    Args:
        nested: ``summarise_nested`` output of the candidate's training (None: trained before nested
            estimates existed, which fails).
        reference: the candidate's ``classification_metrics`` on the reference set (None: no reference set).
        rule: limits and the test level.
        paired: the candidate against the served model on the reference set, when a model is served.
        notes: facts to show with the verdict that decide nothing (data changed, label balance moved).

    Returns:
        A verdict listing every check with its value, interval, limit and basis.
    """
    checks: list[GateCheck] = []
    if nested is None:
        checks.append(
            GateCheck(
                "nested estimates", 0.0, 1.0, False, "metadata", detail="none recorded: retrain this version"
            )
        )
    else:
        basis = f"nested CV, {nested['rows']} rows, {nested['repeats']}x{nested['folds']} folds"
        for name, limit in (
            ("recall", rule.min_recall),
            ("precision", rule.min_precision),
            ("roc_auc", rule.min_roc_auc),
        ):
            est = nested["metrics"][name]
            checks.append(GateCheck(name, est["mean"], limit, est["mean"] >= limit, basis, est["ci95"]))
    if reference is not None:
        cm = reference["confusion_matrix"]
        basis = f"reference set, {sum(cm.values())} rows"
        auc = float(reference["roc_auc"])
        checks.append(
            GateCheck(
                "reference_roc_auc", auc, rule.min_reference_roc_auc, auc >= rule.min_reference_roc_auc, basis
            )
        )
        malignant = cm["tp"] + cm["fn"]
        ci = wilson_interval(cm["tp"], malignant)
        checks.append(
            GateCheck(
                "reference_recall",
                float(reference["recall"]),
                rule.min_recall,
                ci[1] >= rule.min_recall,
                basis,
                ci,
                detail=f"{cm['tp']} of {malignant} cancers caught; fails only if the whole interval is lower",
            )
        )
    if paired is not None:
        basis = f"paired with served {paired.served_version} on {paired.rows} reference rows"
        p_missed = mcnemar_one_sided(paired.missed_only_by_candidate, paired.missed_only_by_served)
        checks.append(
            GateCheck(
                "missed_cancers_vs_served",
                p_missed,
                rule.alpha,
                p_missed >= rule.alpha,
                basis,
                detail=(
                    f"missed only by the candidate {paired.missed_only_by_candidate}, only by the served "
                    f"model {paired.missed_only_by_served}; exact one-sided McNemar p-value"
                ),
            )
        )
        p_alarms = mcnemar_one_sided(paired.alarms_only_by_candidate, paired.alarms_only_by_served)
        checks.append(
            GateCheck(
                "false_alarms_vs_served",
                p_alarms,
                rule.alpha,
                p_alarms >= rule.alpha,
                basis,
                detail=(
                    f"false alarms only by the candidate {paired.alarms_only_by_candidate}, only by the "
                    f"served model {paired.alarms_only_by_served}; exact one-sided McNemar p-value"
                ),
            )
        )
        limit = disagreement_limit(paired.rows, paired.noise_rate)
        contradicts = paired.disagreements > limit
        checks.append(
            GateCheck(
                "agreement_with_served",
                float(paired.disagreements),
                float(limit),
                not contradicts,
                basis,
                comparator="<=",
                detail=(
                    f"the two disagree on {paired.disagreements} of {paired.rows} rows; honest retrains "
                    f"disagree on up to {paired.noise_rate:.1%} (the candidate's own nested-CV models)"
                    + (
                        "; its predictions contradict the served model's far beyond that noise"
                        if contradicts
                        else ""
                    )
                ),
            )
        )
    return GateVerdict(all(c.passed for c in checks), checks, list(notes or []))
