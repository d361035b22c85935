"""etl.scorer: model.json's model equals scikit-learn within 1e-9 (every calibration, every bundled row, any
valid row), survives its JSON round trip, and refuses any document that is not exactly a model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from etl.errors import ArtifactIntegrityError
from etl.features import FEATURE_COLUMNS
from etl.scorer import Calibration, LinearModel, check_parity
from etl.train import CALIBRATION_METHODS, Fitted, arrays, download_artifact, fit_procedure
from etl.validate import load_prepared, split_train_test
from tests.conftest import BUNDLED_CSV
from tests.pipeline_support import bundled_complete_rows

TOL = 1e-9


@pytest.fixture(scope="module")
def fitted() -> tuple[Fitted, np.ndarray, np.ndarray]:
    train, _ = split_train_test(load_prepared(BUNDLED_CSV).frame, test_size=0.2, seed=42)
    X, y, groups = arrays(train)
    return fit_procedure(X, y, groups, seed=42, target_recall=0.98), X, y


@pytest.fixture(scope="module")
def pairs(fitted) -> dict[str, tuple[LinearModel, Any]]:
    result, X, y = fitted
    return {m: (result.model(m), download_artifact(result, X, y, m, 42)) for m in CALIBRATION_METHODS}


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_linear_model_matches_the_downloadable_artifact_on_every_bundled_row(pairs, method: str):
    model, artifact = pairs[method]
    X = bundled_complete_rows()[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
    assert len(X) == 683  # every row with all nine features (699 minus the 16 with NA)
    expected = artifact.predict_proba(X)[:, 1]
    fast = model.proba(X)
    one = np.array([model.proba_one([int(v) for v in row]) for row in X])
    assert np.max(np.abs(fast - expected)) <= TOL
    assert np.max(np.abs(one - expected)) <= TOL
    assert check_parity(model, artifact, X) <= TOL


_row = st.lists(st.integers(1, 10), min_size=9, max_size=9)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(_row, min_size=1, max_size=40), method=st.sampled_from(CALIBRATION_METHODS))
def test_linear_model_matches_the_artifact_on_generated_rows(pairs, rows: list[list[int]], method: str):
    model, artifact = pairs[method]
    X = np.array(rows, dtype=float)
    expected = artifact.predict_proba(X)[:, 1]
    assert np.max(np.abs(model.proba(X) - expected)) <= TOL
    for row, p in zip(rows, expected, strict=True):
        assert abs(model.proba_one(row) - p) <= TOL


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_linear_model_json_round_trip_is_exact(pairs, method: str):
    model, _ = pairs[method]
    again = LinearModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    X = np.random.default_rng(0).integers(1, 11, size=(500, 9)).astype(float)
    np.testing.assert_array_equal(again.proba(X), model.proba(X))


def test_linear_model_is_stable_for_extreme_scores():
    model = LinearModel((1.0,) * 9, 0.0, Calibration.none(), 0.5)
    X = np.array([[1000.0] * 9, [-1000.0] * 9, [0.0] * 9])
    np.testing.assert_allclose(model.proba(X), [1.0, 0.0, 0.5])
    assert model.proba_one([1000] * 9) == 1.0 and model.proba_one([-1000] * 9) == 0.0
    iso = LinearModel((1.0,) * 9, 0.0, Calibration.isotonic([-1.0, 1.0], [0.1, 0.9]), 0.5)
    assert iso.proba_one([1000] * 9) == 0.9 and iso.proba_one([-1000] * 9) == 0.1  # clipped at the ends


@pytest.mark.parametrize(
    "steps",
    [
        [("scaler", MinMaxScaler()), ("classifier", DecisionTreeClassifier())],
        [("scaler", StandardScaler())],
    ],
    ids=["wrong-steps", "one-step"],
)
def test_linear_model_refuses_other_pipelines(steps: list):
    X = np.array([[1.0] * 9, [9.0] * 9])
    pipe = Pipeline(steps)
    if len(steps) == 2:
        pipe.fit(X, [0, 1])
    with pytest.raises(ArtifactIntegrityError, match="not a StandardScaler \\+ LogisticRegression"):
        LinearModel.from_pipeline(pipe, Calibration.none(), 0.5)


def test_check_parity_refuses_a_model_that_drifts(pairs):
    model, artifact = pairs["none"]
    drifted = LinearModel(model.weights, model.bias + 1e-6, model.calibration, model.threshold)
    with pytest.raises(ArtifactIntegrityError, match=r"differs from model\.joblib"):
        check_parity(drifted, artifact)


def _doc(pairs) -> dict[str, Any]:
    return json.loads(json.dumps(pairs["isotonic"][0].to_dict()))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("format", "bcd-linear-model/999"),
        ("features", list(reversed(FEATURE_COLUMNS))),
        ("weights", [1.0] * 8),
        ("weights", [1.0] * 8 + ["1"]),
        ("weights", [1.0] * 8 + [float("nan")]),
        ("bias", True),
        ("bias", float("inf")),
        ("threshold", 1.5),
        ("threshold", None),
        ("calibration", {"kind": "pickle"}),
        ("calibration", {"kind": "isotonic", "x": [2.0, 1.0], "y": [0.1, 0.2]}),
        ("calibration", {"kind": "isotonic", "x": [1.0, 2.0], "y": [0.1, 1.2]}),
        ("calibration", {"kind": "isotonic", "x": [1.0], "y": [0.1, 0.2]}),
        ("calibration", {"kind": "sigmoid", "a": "1", "b": 0}),
        ("calibration", "none"),
    ],
)
def test_linear_model_from_dict_refuses_anything_but_a_model(pairs, path: str, value: object):
    doc = _doc(pairs)
    doc[path] = value
    with pytest.raises(ArtifactIntegrityError, match=r"model\.json is not a valid model"):
        LinearModel.from_dict(doc)


@pytest.mark.parametrize("doc", [None, [], "model", {"format": "bcd-linear-model/1"}])
def test_linear_model_from_dict_refuses_other_documents(doc: object):
    with pytest.raises(ArtifactIntegrityError):
        LinearModel.from_dict(doc)
