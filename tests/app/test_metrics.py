"""app/metrics.py: docs/monitoring.md lists every metric it declares (type, labels, and no other), and its
bulk histogram observation equals one observation per value."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics import MetricWrapperBase

from app import metrics
from etl.evaluate import HEADLINE
from etl.features import FEATURE_NAMES
from etl.monitoring import QUALITY_METRICS

DOC = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"
SUFFIX = {"counter": "_total", "gauge": "", "histogram": "", "summary": ""}


def declared() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exported family name -> (type, label names), from the module's metric objects."""
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + SUFFIX[value._type]
            found[name] = (value._type, tuple(value._labelnames))
        elif isinstance(value, metrics.ServedModelInfo | metrics.LiveFiguresCollector):  # read at scrape time
            for family in value.describe():
                found[family.name] = (family.type, tuple(family._labelnames))  # type: ignore[attr-defined]
    return found


def documented() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """Rows of the doc's metrics table -> (type, label names, labels cell)."""
    text = DOC.read_text()
    section = text.split("## Metrics the service exports", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        name, kind, labels = cells[0].strip("`"), cells[1], cells[2]
        # label names are the backticked words outside parentheses; the parentheses hold their values
        names = tuple(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", labels)))
        rows[name] = (kind, names, labels)
    return rows


def test_metrics_doc_table_matches_declared_metrics() -> None:
    doc = {name: (kind, labels) for name, (kind, labels, _) in documented().items()}
    assert doc == declared()


def test_metrics_doc_lists_bounded_label_values() -> None:
    rows = documented()
    for step in metrics.STEPS:
        assert f"`{step}`" in rows["bcd_pipeline_steps_total"][2], step
    for outcome in metrics.OUTCOMES:
        assert f"`{outcome}`" in rows["bcd_pipeline_steps_total"][2], outcome
    for name in HEADLINE:
        assert f"`{name}`" in rows["bcd_model_quality_ratio"][2], name
    assert rows["bcd_predictions_total"][2] == "`label` (`benign`, `malignant`)"
    for reason in metrics.DROP_REASONS:
        assert f"`{reason}`" in rows["bcd_prediction_log_dropped_total"][2], reason
    for name in QUALITY_METRICS:
        assert f"`{name}`" in rows["bcd_live_quality_ratio"][2], name
    for name in FEATURE_NAMES:
        assert f"`{name}`" in rows["bcd_feature_drift_psi"][2], name


def test_observe_many_equals_observe_one_by_one():
    values = np.random.default_rng(0).random(500)
    values[:5] = (0.05, 0.1, 1.0, 0.0, 0.35)  # exactly on bucket bounds
    buckets = tuple(i / 20 for i in range(1, 21))
    one_by_one = Histogram("p", "d", buckets=buckets, registry=CollectorRegistry())
    for v in values:
        one_by_one.observe(float(v))
    many = Histogram("p", "d", buckets=buckets, registry=CollectorRegistry())
    metrics.observe_many(many, values)

    def samples(h: Histogram) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in h.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    a, b = samples(one_by_one), samples(many)
    assert a.keys() == b.keys()
    for key in a:
        assert math.isclose(a[key], b[key], rel_tol=1e-12), key
