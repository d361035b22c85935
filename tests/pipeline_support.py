"""Helpers for the issue-2 tests: settings on tmp dirs, small hand-built CSVs, a trained registry template."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from etl.features import EXPECTED_COLUMNS, FEATURE_COLUMNS, FEATURE_NAMES
from etl.pipeline import evaluate_version, train_version
from etl.registry import Registry
from etl.settings import Settings
from tests.conftest import BUNDLED_CSV


def make_settings(base: Path, data_url: str | Path = BUNDLED_CSV, **overrides: object) -> Settings:
    """Settings rooted in ``base`` (no .env, no environment leaking into paths)."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_url=str(data_url),
        data_dir=base / "data",
        results_dir=base / "results",
        upload_dir=base / "upload",
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


def instance(row: Sequence[int]) -> dict[str, int]:
    return dict(zip(FEATURE_NAMES, (int(v) for v in row), strict=True))


def build_served_registry(base: Path) -> tuple[Settings, str]:
    """Train and evaluate (promote) one version on the bundled CSV in ``base``: (settings, version)."""
    settings = make_settings(base)
    registry = Registry(settings.results_dir)
    trained = train_version(settings, registry)
    evaluated = evaluate_version(settings, registry, trained.version)
    assert evaluated.promoted, evaluated.gate.reasons
    return settings, trained.version


def copy_tree(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, dirs_exist_ok=True)
    return dest
