"""The quality gate: minimum figures, and no regression against the model already served."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float
    limit: float
    passed: bool

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.name} = {self.value:.4f} (limit >= {self.limit:.4f}) {verdict}"


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.describe() for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks], "reasons": self.reasons}


def check_quality_gate(
    metrics: dict[str, Any],
    *,
    min_recall: float,
    min_precision: float,
    min_roc_auc: float,
    served_metrics: dict[str, Any] | None = None,
    tolerance: float = 0.01,
) -> GateVerdict:
    """Judge a candidate's held-out metrics.

    Args:
        metrics: the candidate's metrics on its held-out split.
        min_recall, min_precision, min_roc_auc: absolute minimums.
        served_metrics: the served model's metrics on the *same* held-out split, if a model is served.
        tolerance: how far below the served model's recall and F1 the candidate may fall.

    Returns:
        A verdict listing each check with its value and limit.
    """
    checks = [
        GateCheck("recall", metrics["recall"], min_recall, metrics["recall"] >= min_recall),
        GateCheck("precision", metrics["precision"], min_precision, metrics["precision"] >= min_precision),
        GateCheck("roc_auc", metrics["roc_auc"], min_roc_auc, metrics["roc_auc"] >= min_roc_auc),
    ]
    if served_metrics is not None:
        for name in ("recall", "f1"):
            limit = served_metrics[name] - tolerance
            checks.append(
                GateCheck(f"{name}_vs_served", metrics[name], limit, metrics[name] >= limit - 1e-12)
            )
    return GateVerdict(all(c.passed for c in checks), checks)
