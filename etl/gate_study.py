"""``python -m etl gate-study``: how often the quality gate decides wrong, both ways, measured.

Every candidate is trained by the real procedure (``training.train_on``) on the bundled data, with the
default reference set excluded, and judged by the real gate (``judging.judge``) alone and against a served
model (an honest retrain with RANDOM_SEED 42), exactly as the evaluate step would judge it.

Scenarios, each over RANDOM_SEED 0..N-1:

- honest retrains on unchanged data (should pass), alone and along simulated sequences of 20 retrains,
  each compared with the model promoted before it;
- labels permuted, labels flipped (``Class = 1 - Class``), only the two weakest features (the other seven
  blanked), a third of the malignant labels flipped to benign: should be rejected;
- honest retrains whose operating point is moved down (TARGET_RECALL lowered from 0.98): genuinely worse
  candidates with a known true recall drop, measured on rows they never trained on (their held-out and the
  reference rows) against the honest candidate of the same seed. Gives the power curve.

It is a study, not a test: it takes minutes and prints tables.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from etl.features import FEATURE_COLUMNS, TARGET_COLUMN
from etl.gate import GateRule
from etl.hashing import sha256_bytes
from etl.judging import gate_rule, judge
from etl.reference import ReferenceSet, seed_frame
from etl.scorer import LinearModel
from etl.settings import BUNDLED_DATA_PATH, Settings
from etl.training import train_on
from etl.validate import load_prepared

SERVED_SEED = 42
SEQUENCE_LENGTH = 20
LOWER_TARGETS = (0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.90, 0.88, 0.85, 0.80)
WEAK_FEATURES = ("Mitoses", "Normal.nucleoli")  # the two lowest univariate ROC-AUCs of the bundled data
SCENARIOS = ("honest", "permuted", "flipped", "two weakest features", "third of malignant -> benign")


@dataclass
class Outcome:
    """One candidate: its verdicts, and what the simulations need to judge it again against others."""

    scenario: str
    seed: int
    passed_alone: bool
    failed_alone: list[str]
    passed_vs_served: bool
    failed_vs_served: list[str]
    model: dict[str, Any]
    nested_summary: dict[str, Any]
    nested_models: list[dict[str, Any]]
    true_recall: float
    lower: dict[float, dict[str, Any]] = field(default_factory=dict)


def _data(scenario: str, clean: pd.DataFrame, seed: int) -> pd.DataFrame:
    frame = clean.copy()
    rng = np.random.default_rng(10_000 + seed)
    if scenario == "permuted":
        frame[TARGET_COLUMN] = rng.permutation(frame[TARGET_COLUMN].to_numpy())
    elif scenario == "flipped":
        frame[TARGET_COLUMN] = 1 - frame[TARGET_COLUMN]
    elif scenario == "two weakest features":
        for column in FEATURE_COLUMNS:
            if column not in WEAK_FEATURES:
                frame[column] = 1
    elif scenario == "third of malignant -> benign":
        malignant = np.flatnonzero(frame[TARGET_COLUMN].to_numpy() == 1)
        flipped = rng.choice(malignant, size=len(malignant) // 3, replace=False)
        labels = frame[TARGET_COLUMN].to_numpy().copy()
        labels[flipped] = 0
        frame[TARGET_COLUMN] = labels
    return frame


def _true_recall(model: LinearModel, clean_unseen: pd.DataFrame) -> float:
    """Recall with the true labels on rows the candidate never trained on."""
    y = clean_unseen[TARGET_COLUMN].to_numpy()
    pred = model.proba(clean_unseen.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float)) >= model.threshold
    return float(pred[y == 1].mean())


def _failed(verdict: Any) -> list[str]:
    return [c.name for c in verdict.checks if not c.passed]


@dataclass(frozen=True)
class _Job:
    scenario: str
    seed: int
    settings: Settings
    clean: pd.DataFrame
    reference: ReferenceSet
    served: dict[str, Any] | None


def _run(job: _Job) -> Outcome:
    settings = job.settings.model_copy(update={"random_seed": job.seed})
    rule = gate_rule(settings)
    trained = train_on(_data(job.scenario, job.clean, job.seed), job.reference.ids, settings)
    nested_models = trained.nested_models()
    served = ("served", LinearModel.from_dict(job.served)) if job.served else None
    alone, _ = judge(trained.summary, trained.model, nested_models, job.reference, rule)
    paired, _ = judge(trained.summary, trained.model, nested_models, job.reference, rule, served)
    # rows it never trained on, with their true labels: its held-out patients and the reference set
    unseen = pd.concat([job.clean.loc[trained.test.index], job.reference.frame])
    outcome = Outcome(
        job.scenario,
        job.seed,
        alone.passed,
        _failed(alone),
        paired.passed,
        _failed(paired),
        trained.model.to_dict(),
        trained.summary,
        [m.to_dict() for m in nested_models],
        _true_recall(trained.model, unseen),
    )
    if job.scenario == "honest":
        outcome.lower = {t: _lower_target(trained, t, job, rule, unseen, served) for t in LOWER_TARGETS}
    return outcome


def _lower_target(
    trained: Any, target: float, job: _Job, rule: GateRule, unseen: pd.DataFrame, served: Any
) -> dict[str, Any]:
    """The same candidate with TARGET_RECALL lowered: every threshold chosen again (final and nested)."""
    from etl.evaluate import summarise_nested

    model = trained.fitted.model(trained.method, target)
    summary = summarise_nested(trained.nested.pooled(trained.method, target), seed=job.seed, samples=50)
    models = [outer.fitted.model(trained.method, target) for outer in trained.nested.folds]
    alone, _ = judge(summary, model, models, job.reference, rule)
    paired, _ = judge(summary, model, models, job.reference, rule, served)
    return {
        "true_recall": _true_recall(model, unseen),
        "passed_alone": alone.passed,
        "passed_vs_served": paired.passed,
    }


def _pool_map(jobs: list[_Job], processes: int) -> list[Outcome]:
    if processes <= 1:
        return [_run(j) for j in jobs]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return pool.map(_run, jobs, chunksize=1)


def _sequences(
    honest: list[Outcome], served: Outcome, reference: ReferenceSet, rule: GateRule, count: int, seed: int
) -> tuple[list[int], int]:
    """Rejections per simulated sequence of 20 honest retrains, each judged against the model promoted
    before it (the first against the seed-42 model); sequences draw from the measured candidates."""
    rng = np.random.default_rng(seed)
    models = {o.seed: LinearModel.from_dict(o.model) for o in honest}
    nested_models = {o.seed: [LinearModel.from_dict(m) for m in o.nested_models] for o in honest}
    cache: dict[tuple[int, int], bool] = {}
    served_model = LinearModel.from_dict(served.model)
    by_seed = {o.seed: o for o in honest}
    rejections = []
    for _ in range(count):
        current: tuple[int, LinearModel] = (-1, served_model)
        rejected = 0
        for s in rng.choice(list(by_seed), size=SEQUENCE_LENGTH, replace=True):
            key = (int(s), current[0])
            if key not in cache:
                verdict, _ = judge(
                    by_seed[int(s)].nested_summary,
                    models[int(s)],
                    nested_models[int(s)],
                    reference,
                    rule,
                    ("served", current[1]),
                )
                cache[key] = verdict.passed
            if cache[key]:
                current = (int(s), models[int(s)])
            else:
                rejected += 1
        rejections.append(rejected)
    return rejections, len(cache)


def _rate(k: int, n: int) -> str:
    from etl.evaluate import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} ({k / n:.0%}; 95% {lo:.0%}-{hi:.0%})" if n else "-"


def run_study(settings: Settings, *, seeds: int = 50, sequences: int = 2000, jobs: int = 0) -> str:
    """Run every scenario and return the report (markdown tables)."""
    started = time.monotonic()
    clean = load_prepared(BUNDLED_DATA_PATH).frame
    reference_frame = seed_frame(clean)
    reference = ReferenceSet(
        reference_frame,
        sha256_bytes(reference_frame.to_csv(index=False).encode()),
        "seeded from the bundled data",
    )
    processes = jobs or os.cpu_count() or 1
    rule = gate_rule(settings)
    served = _run(_Job("honest", SERVED_SEED, settings, clean, reference, None))
    results: dict[str, list[Outcome]] = {}
    for scenario in SCENARIOS:
        batch = [_Job(scenario, s, settings, clean, reference, served.model) for s in range(seeds)]
        results[scenario] = _pool_map(batch, processes)

    honest = results["honest"]
    lines = [
        f"# Quality-gate study: {seeds} seeds per scenario, {sequences} simulated sequences of "
        f"{SEQUENCE_LENGTH} retrains",
        "",
        f"Bundled data ({len(clean)} clean rows), reference set {len(reference.frame)} rows "
        f"({int(reference.frame[TARGET_COLUMN].sum())} malignant) excluded from training; served model "
        f"for the 'vs served' column: honest retrain, RANDOM_SEED {SERVED_SEED}. Rule: nested recall >= "
        f"{rule.min_recall}, precision >= {rule.min_precision}, ROC-AUC >= {rule.min_roc_auc}; reference "
        f"ROC-AUC >= {rule.min_reference_roc_auc}, reference recall not confidently below "
        f"{rule.min_recall}; paired McNemar tests at {rule.alpha}; disagreement within the measured noise.",
        "",
        "| scenario | rejected, no served model | rejected, vs served | checks that failed "
        "| true recall (mean) |",
        "|---|---|---|---|---|",
    ]
    for scenario, outs in results.items():
        failed: dict[str, int] = {}
        for o in outs:
            for name in set(o.failed_alone) | set(o.failed_vs_served):
                failed[name] = failed.get(name, 0) + 1
        shown = ", ".join(f"{k} {v}" for k, v in sorted(failed.items(), key=lambda kv: -kv[1])) or "-"
        lines.append(
            f"| {scenario} | {_rate(sum(not o.passed_alone for o in outs), len(outs))} | "
            f"{_rate(sum(not o.passed_vs_served for o in outs), len(outs))} | {shown} | "
            f"{np.mean([o.true_recall for o in outs]):.3f} |"
        )
    rejections, pairs = _sequences(honest, served, reference, rule, sequences, seed=0)
    counts = np.bincount(rejections, minlength=3)
    lines += [
        "",
        f"Sequences of {SEQUENCE_LENGTH} honest retrains, each against the model promoted before it "
        f"({sequences} sequences drawn from the {len(honest)} measured retrains, {pairs} distinct pairs "
        "judged): "
        f"mean {np.mean(rejections):.2f} rejected per sequence; sequences with 0 rejections "
        f"{counts[0] / sequences:.1%}, with 1 {counts[1] / sequences:.1%}, with 2 or more "
        f"{1 - (counts[0] + counts[1]) / sequences:.1%}.",
        "",
        "Power against genuinely worse candidates: honest retrains with TARGET_RECALL lowered (true recall "
        "on rows they never trained on, with true labels, against the same seed's honest candidate):",
        "",
        "| TARGET_RECALL | true recall drop (mean) | rejected, no served model | rejected, vs served |",
        "|---|---|---|---|",
    ]
    smallest: dict[str, float | None] = {"alone": None, "vs served": None}
    for target in LOWER_TARGETS:
        drops = [o.true_recall - o.lower[target]["true_recall"] for o in honest]
        alone = sum(not o.lower[target]["passed_alone"] for o in honest)
        vs = sum(not o.lower[target]["passed_vs_served"] for o in honest)
        lines.append(
            f"| {target:.2f} | {np.mean(drops):.3f} | {_rate(alone, len(honest))} | "
            f"{_rate(vs, len(honest))} |"
        )
        for key, rejected in (("alone", alone), ("vs served", vs)):
            if smallest[key] is None and rejected >= 0.8 * len(honest):
                smallest[key] = float(np.mean(drops))
    lines += [
        "",
        "Smallest mean true recall drop rejected at least 80% of the time: "
        + "; ".join(
            f"{k}: {f'{v:.3f}' if v is not None else 'none in the range'}" for k, v in smallest.items()
        )
        + ".",
        "",
        f"({time.monotonic() - started:.0f} s, {processes} processes)",
        "",
    ]
    return "\n".join(lines)
