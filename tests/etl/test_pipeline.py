"""The pipeline's steps wired together, on the real bundled data (no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.errors import TrainingInProgressError
from etl.features import FEATURE_COLUMNS, FEATURE_NAMES
from etl.pipeline import evaluate_version, open_registry, train_version
from tests.etl.conftest import served_copy, trained_copy
from tests.pipeline_support import QUICK_NESTED, bundled_complete_rows, make_settings
from tests.registry_support import reference_frame


def test_pipeline_train_then_evaluate_promotes_a_model_that_meets_the_targets(
    tmp_path: Path, trained_template
):
    settings, trained = trained_copy(trained_template, tmp_path)  # train_version on the bundled data
    registry = open_registry(settings)

    assert registry.versions() == [trained.version]
    assert registry.served_version() is None  # training alone never serves
    evaluated = evaluate_version(settings, registry, trained.version)

    assert trained.rows == {
        "raw": 699,
        "missing_dropped": 16,
        "duplicates_dropped": 8,
        "clean": 675,
        "reference_excluded": 136,
        "train": trained.rows["train"],
        "test": trained.rows["test"],
    }
    assert trained.rows["train"] + trained.rows["test"] == 675 - 136
    assert evaluated.gate.passed, evaluated.gate.reasons
    assert evaluated.promoted and registry.served_version() == trained.version
    assert evaluated.metrics["recall"] >= 0.95 and evaluated.metrics["accuracy"] >= 0.95
    assert (settings.results_dir / "model.joblib").read_bytes() == (
        settings.results_dir / "models" / trained.version / "model.joblib"
    ).read_bytes()


def test_pipeline_gate_failure_keeps_the_served_model(tmp_path: Path, bundled_csv: Path, served_template):
    settings, good = served_copy(served_template, tmp_path)  # trained, evaluated and promoted
    registry = open_registry(settings)
    assert registry.served_version() == good

    shuffled = pd.read_csv(bundled_csv, dtype=str)
    shuffled["Class"] = np.random.default_rng(0).permutation(shuffled["Class"].to_numpy())
    bad_csv = settings.data_dir / "shuffled.csv"  # a local override must live under DATA_DIR
    bad_csv.parent.mkdir(parents=True, exist_ok=True)
    shuffled.to_csv(bad_csv, index=False)

    # one repeat of two outer folds: shuffled labels put its ROC-AUC far below any floor
    bad = train_version(settings.model_copy(update=QUICK_NESTED), registry, str(bad_csv))
    verdict = evaluate_version(settings, registry, bad.version)

    assert not verdict.gate.passed and not verdict.promoted
    assert any(r.startswith("roc_auc") for r in verdict.gate.reasons), verdict.gate.reasons
    assert registry.served_version() == good
    assert registry.status(bad.version) == "rejected"


def test_pipeline_same_data_settings_and_libraries_train_once(tmp_path: Path, bundled_csv: Path):
    settings = make_settings(tmp_path, bundled_csv, **QUICK_NESTED)
    registry = open_registry(settings)
    first = train_version(settings, registry)
    again = train_version(settings, registry)
    assert not first.unchanged and again.unchanged
    assert again.version == first.version and again.nested == first.nested
    assert registry.versions() == [first.version]
    forced = train_version(settings, registry, force=True)
    assert not forced.unchanged and forced.version != first.version
    other = train_version(make_settings(tmp_path, bundled_csv, **QUICK_NESTED, target_recall=0.97), registry)
    assert not other.unchanged
    assert registry.versions() == [first.version, forced.version, other.version]


def test_pipeline_reference_patients_never_reach_training(tmp_path: Path, trained_template):
    settings, trained = trained_copy(trained_template, tmp_path)
    registry = open_registry(settings)
    reference = reference_frame(settings.results_dir)
    holdout = registry.load_holdout(trained.version)
    nested = registry.load_nested(trained.version)
    assert nested is not None
    assert set(reference["Id"]).isdisjoint(holdout["Id"])
    assert set(reference["Id"]).isdisjoint(nested["group"])
    assert len(set(nested["group"])) + len(set(reference["Id"])) <= 675


def test_pipeline_second_concurrent_training_is_refused(tmp_path: Path, bundled_csv: Path):
    settings = make_settings(tmp_path, bundled_csv)
    registry = open_registry(settings)
    with registry.training_lock(), pytest.raises(TrainingInProgressError, match="already running"):
        train_version(settings, registry)
    assert registry.versions() == []


def test_pipeline_meta_records_training_rows_feature_distribution(tmp_path: Path, trained_template):
    """meta.json's feature_distribution counts each score of each feature over exactly the training rows:
    the clean data minus the reference patients minus the held-out rows, counted here independently."""
    settings, trained = trained_copy(trained_template, tmp_path)
    registry = open_registry(settings)
    meta = registry.read_meta(trained.version)
    clean = bundled_complete_rows().drop_duplicates()
    reference = reference_frame(settings.results_dir)
    pool = clean[~clean["Id"].isin(reference["Id"])]
    holdout = registry.load_holdout(trained.version).astype(pool.dtypes.to_dict())
    marked = pool.merge(holdout, how="left", on=list(pool.columns), indicator=True)
    train = marked[marked["_merge"] == "left_only"]
    assert len(train) == trained.rows["train"] == meta["feature_distribution"]["rows"]
    for name, column in zip(FEATURE_NAMES, FEATURE_COLUMNS, strict=True):
        counts = train[column].value_counts()
        assert meta["feature_distribution"]["counts"][name] == [int(counts.get(v, 0)) for v in range(1, 11)]
