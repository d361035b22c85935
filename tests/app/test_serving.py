"""Exactness of the served answers (app/serving.py): the stored scikit-learn pipeline's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.features import FEATURE_COLUMNS, FEATURE_MAX, FEATURE_MIN, FEATURE_NAMES
from etl.registry import Registry
from tests.app.conftest import named
from tests.conftest import BUNDLED_CSV
from tests.pipeline_support import load_artifact

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def stored(template: tuple[Path, str]) -> tuple[Any, dict[str, Any], str]:
    results = template[0] / "results"
    version = Registry(results).served_version()
    assert version
    pipeline, meta = load_artifact(results, version)
    return pipeline, meta, version


@pytest.fixture(scope="module")
def csv_rows() -> list[tuple[int, ...]]:
    """Every row of the bundled CSV that is a valid request (rows with a missing "?" bare nuclei are not)."""
    frame = pd.read_csv(BUNDLED_CSV)
    features = frame[list(FEATURE_COLUMNS)].apply(pd.to_numeric, errors="coerce").dropna()
    return [tuple(int(v) for v in row) for row in features.itertuples(index=False)]


def _expected(pipeline: Any, rows: list[tuple[int, ...]]) -> np.ndarray:
    X = pd.DataFrame(np.array(rows, dtype=float), columns=list(FEATURE_COLUMNS))
    if not hasattr(pipeline, "feature_names_in_"):
        return pipeline.predict_proba(X.to_numpy())[:, 1]
    return pipeline.predict_proba(X)[:, 1]


def _check_prediction(out: dict[str, Any], expected: float, threshold: float) -> None:
    p = out["probability_malignant"]
    assert abs(p - expected) <= TOLERANCE, (p, expected)
    assert out["class"] == (1 if p >= threshold else 0)
    assert out["label"] == ("malignant" if out["class"] else "benign")


def test_predict_every_csv_row_equals_predict_proba(
    predict_client: TestClient, stored: Any, csv_rows: list[Any]
):
    pipeline, meta, version = stored
    expected = _expected(pipeline, csv_rows)
    assert len(csv_rows) > 600
    for row, p in zip(csv_rows, expected, strict=True):
        r = predict_client.post("/predict", json=named(row))
        assert r.status_code == 200, r.text
        out = r.json()
        _check_prediction(out, float(p), meta["threshold"])
        assert out["threshold"] == meta["threshold"] and out["model_version"] == version


def test_predict_batch_every_csv_row_equals_predict_proba(
    predict_client: TestClient, stored: Any, csv_rows: list[Any]
):
    pipeline, meta, version = stored
    r = predict_client.post("/predict/batch", json={"instances": [named(row) for row in csv_rows]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == version and out["threshold"] == meta["threshold"]
    assert len(out["predictions"]) == len(csv_rows)
    for prediction, p in zip(out["predictions"], _expected(pipeline, csv_rows), strict=True):
        assert set(prediction) == {"prediction_id", "label", "class", "probability_malignant"}
        _check_prediction(prediction, float(p), meta["threshold"])


ROWS = st.tuples(*[st.integers(FEATURE_MIN, FEATURE_MAX)] * len(FEATURE_NAMES))


HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(row=ROWS)
def test_predict_random_valid_row_equals_predict_proba(
    predict_client: TestClient, stored: Any, row: tuple[int, ...]
):
    pipeline, meta, _ = stored
    r = predict_client.post("/predict", json=named(row))
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), float(_expected(pipeline, [row])[0]), meta["threshold"])


@HYPOTHESIS
@given(
    rows=st.lists(ROWS, min_size=1, max_size=60), csv_names=st.lists(st.booleans(), min_size=60, max_size=60)
)
def test_predict_batch_random_valid_rows_equal_predict_proba(
    predict_client: TestClient, stored: Any, rows: list[tuple[int, ...]], csv_names: list[bool]
):
    """Some instances use the CSV column names: the fast path then validates with the pydantic model."""
    pipeline, meta, _ = stored
    instances = [
        named(row, FEATURE_COLUMNS if csv else FEATURE_NAMES)
        for row, csv in zip(rows, csv_names[: len(rows)], strict=True)
    ]
    r = predict_client.post("/predict/batch", json={"instances": instances})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == len(rows)
    for prediction, p in zip(predictions, _expected(pipeline, rows), strict=True):
        _check_prediction(prediction, float(p), meta["threshold"])
