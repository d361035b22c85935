"""Helpers for the issue-2 tests: settings on tmp dirs, small hand-built CSVs, a trained registry template."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock

from etl.features import EXPECTED_COLUMNS, FEATURE_COLUMNS, FEATURE_NAMES
from etl.pipeline import evaluate_version, open_registry, train_version
from etl.registry import Registry
from etl.settings import Settings
from tests.conftest import BUNDLED_CSV

# the least nested cross-validation there is: for tests that train but assert none of its figures
QUICK_NESTED = {"nested_repeats": 1, "nested_folds": 2}


def make_settings(
    base: Path,
    data_url: str | Path = BUNDLED_CSV,
    settings_class: type[Settings] = Settings,
    **overrides: object,
) -> Settings:
    """Settings (or ``settings_class``, e.g. the service's) rooted in ``base`` (no .env, no environment
    leaking into paths)."""
    return settings_class(
        _env_file=None,  # type: ignore[call-arg]
        data_url=str(data_url),
        data_dir=base / "data",
        results_dir=base / "results",
        upload_dir=base / "upload",
        model_signing_key_file=base / "secrets" / "model_signing.key",
        **overrides,  # type: ignore[arg-type]
    )


def write_csv(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] = EXPECTED_COLUMNS) -> Path:
    """Write a CSV quoted like the shared file: every value a quoted string except an integer ``Class``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    unquoted = {i for i, name in enumerate(header) if name == "Class"}
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(header)
        for row in rows:
            writer.writerow(
                [v if i in unquoted or not isinstance(v, int) else str(v) for i, v in enumerate(row)]
            )
    return path


def synthetic_rows(n_patients_per_class: int = 12, seed: int = 0) -> list[list[object]]:
    """Valid rows: benign tumours score low, malignant high; one row per patient (Id), both classes."""
    rng = np.random.default_rng(seed)
    rows: list[list[object]] = []
    pid = 100
    for cls in (0, 1):
        for _ in range(n_patients_per_class):
            low, high = (1, 5) if cls == 0 else (5, 11)
            feats = rng.integers(low, high, size=len(FEATURE_COLUMNS)).tolist()
            rows.append([pid, *feats, cls])
            pid += 1
    return rows


def read_bundled() -> pd.DataFrame:
    """The bundled CSV as pandas reads it by default (an independent view of the data)."""
    return pd.read_csv(BUNDLED_CSV)


def bundled_complete_rows() -> pd.DataFrame:
    """Rows of the bundled CSV with all nine features present (duplicates kept), as integers."""
    frame = read_bundled().dropna()
    return frame.astype({c: "int64" for c in frame.columns})


def fitted_version_files(base: Path) -> tuple[dict[str, bytes], pd.DataFrame]:
    """The files of a small real version (model.json, model.joblib, holdout.csv) and its held-out rows."""
    import io

    import joblib

    from etl.train import arrays, download_artifact, fit_procedure
    from etl.validate import load_prepared

    frame = load_prepared(write_csv(base / "d.csv", synthetic_rows(10))).frame
    X, y, groups = arrays(frame)
    fitted = fit_procedure(X, y, groups, seed=0, target_recall=0.98)
    buffer = io.BytesIO()
    joblib.dump(download_artifact(fitted, X, y, "none", 0), buffer)
    holdout = frame.iloc[::3]
    files = {
        "model.json": json.dumps(fitted.model("none").to_dict()).encode(),
        "model.joblib": buffer.getvalue(),
        "holdout.csv": holdout.to_csv(index=False).encode(),
    }
    return files, holdout


def load_artifact(results_dir: Path, version: str) -> tuple[Any, dict[str, Any]]:
    """The version's downloadable model.joblib (the scikit-learn object, loaded by the test, which trusts it)
    and its metadata: the independent reference the service's answers are compared with."""
    import joblib

    from tests.registry_support import meta_of, version_dir

    model = joblib.load(version_dir(results_dir, version) / "model.joblib")
    return model, meta_of(results_dir, version)


def instance(row: Sequence[int]) -> dict[str, int]:
    return dict(zip(FEATURE_NAMES, (int(v) for v in row), strict=True))


def build_served_registry(base: Path) -> tuple[Settings, str]:
    """Train and evaluate (promote) one version on the bundled CSV in ``base``: (settings, version)."""
    settings = make_settings(base)
    registry = open_registry(settings)
    try:
        trained = train_version(settings, registry)
        evaluated = evaluate_version(settings, registry, trained.version)
    finally:
        registry.close()  # the database whole in its file, so that the folder can be copied
    assert evaluated.promoted, evaluated.gate.reasons
    return settings, trained.version


def unevaluated_copy(registry: Registry, version: str, copy: str = "20990101T000000Z-0000abcd") -> str:
    """``version``'s files and training metadata published again as ``copy`` (the newest version): trained,
    not evaluated, no report; a second version without training one."""
    meta = registry.read_meta(version)
    files = {name: registry.read_file(version, name) for name in meta["files"]}
    registry.create_version(copy, files, {k: v for k, v in meta.items() if k not in ("drive", "uploads")})
    return copy


def copy_tree(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, dirs_exist_ok=True)
    return dest


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict[str, Any]]
) -> tuple[Path, dict[str, Any]]:
    """A read-only template folder built once per test run, and what ``build`` said of it (JSON).

    Under pytest-xdist the workers share it: the first to need it builds it under a file lock in the run's
    own temporary folder, the others wait and reuse it (a training each saved). Tests never change it: they
    work on copies (``copy_tree``)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<N>/: this run's, shared by its workers
    base, done = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(base, ignore_errors=True)  # a build that failed in another worker
            base.mkdir()
            done.write_text(json.dumps(build(base)))
    return base, json.loads(done.read_text())


def trained_template_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A folder holding one version trained on the bundled data with the default settings, not evaluated, and
    its summary (``TrainSummary.to_dict``); built once per run (``built_once``)."""

    def build(base: Path) -> dict[str, Any]:
        settings = make_settings(base)
        registry = open_registry(settings)
        try:
            return train_version(settings, registry).to_dict()
        finally:
            registry.close()  # the database whole in its file, so that the folder can be copied

    return built_once(tmp_path_factory, "trained-template", build)


def served_template_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The trained template evaluated and promoted (what ``build_served_registry`` makes, without training
    again): the folder and the served version; built once per run."""
    trained_base, trained = trained_template_folder(tmp_path_factory)

    def build(base: Path) -> dict[str, Any]:
        copy_tree(trained_base, base)
        settings = make_settings(base)
        registry = open_registry(settings)
        try:
            evaluated = evaluate_version(settings, registry, trained["version"])
        finally:
            registry.close()
        assert evaluated.promoted, evaluated.gate.reasons
        return {"version": trained["version"]}

    base, built = built_once(tmp_path_factory, "served-template", build)
    return base, built["version"]
